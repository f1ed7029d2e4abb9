"""Classify: a quality classifier on embeddings, trained on the LLM's educational-value labels.

phi-1 §2.1 trains a random forest on CodeGen embeddings of ~100K GPT-4-labelled samples and uses it
to score the rest of The Stack + StackOverflow; it publishes no accuracy. We train the random forest
(the paper's choice) and a logistic-regression baseline, and report both on held-out labels:
precision, recall and F1 of the positive class at the chosen probability threshold, plus a sweep of
thresholds so the operating point can be chosen knowingly.

The target is binary: label >= `positive_label` counts as "educational" (the paper's yes/no
question: 1 = yes; the additive 0-5 scale: 3, FineWeb-Edu's cut). Records whose answer had no label
(None) are left out and counted.
"""

from __future__ import annotations

import dataclasses
import pickle
from typing import Sequence

import numpy as np

KINDS = ("random_forest", "logistic_regression")
SWEEP = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))


class NotTrainedError(RuntimeError):
  pass


@dataclasses.dataclass
class Classifier:
  kind: str = "random_forest"
  threshold: float = 0.5
  positive_label: int = 3
  seed: int = 0
  n_estimators: int = 200
  workers: int = 1
  model: object = None
  embedder: str | None = None      # the embedder the classifier was trained on (checked at use)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"classifier kind must be one of {KINDS}, got {self.kind!r}")

  def _new_model(self):
    if self.kind == "random_forest":
      from sklearn.ensemble import RandomForestClassifier
      return RandomForestClassifier(n_estimators=self.n_estimators, min_samples_leaf=2,
                                    class_weight="balanced", n_jobs=self.workers,
                                    random_state=self.seed)
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced")

  def fit(self, x_ND: np.ndarray, labels: Sequence[int]) -> "Classifier":
    y = binary_targets(labels, self.positive_label)
    if len(set(y.tolist())) < 2:
      raise ValueError(f"all {len(y)} training labels are on one side of positive_label="
                       f"{self.positive_label}; annotate a larger or more varied sample")
    self.model = self._new_model().fit(x_ND, y)
    return self

  def score(self, x_ND: np.ndarray) -> np.ndarray:
    """P(educational) per row, float32 [N]."""
    if self.model is None:
      raise NotTrainedError(f"the {self.kind} classifier has not been trained: run the classify "
                            f"stage (or Classifier.fit / Classifier.load) before scoring")
    return self.model.predict_proba(x_ND)[:, 1].astype(np.float32)

  def save(self, path) -> None:
    with open(path, "wb") as f:
      pickle.dump(self, f)

  @staticmethod
  def load(path) -> "Classifier":
    try:
      with open(path, "rb") as f:
        return pickle.load(f)
    except FileNotFoundError:
      raise NotTrainedError(f"no trained classifier at {path}: run the classify stage first") from None


def binary_targets(labels: Sequence[int], positive_label: int) -> np.ndarray:
  return (np.asarray(labels) >= positive_label).astype(np.int32)


def metrics_at(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
  predicted = scores >= threshold
  tp = int(np.sum(predicted & (y_true == 1)))
  fp = int(np.sum(predicted & (y_true == 0)))
  fn = int(np.sum(~predicted & (y_true == 1)))
  precision = tp / (tp + fp) if tp + fp else 0.0
  recall = tp / (tp + fn) if tp + fn else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"threshold": threshold, "precision": round(precision, 4), "recall": round(recall, 4),
          "f1": round(f1, 4), "accuracy": round(float(np.mean(predicted == (y_true == 1))), 4),
          "kept_fraction": round(float(np.mean(predicted)), 4)}


def evaluate(classifier: Classifier, x_ND: np.ndarray, labels: Sequence[int]) -> dict:
  y = binary_targets(labels, classifier.positive_label)
  scores = classifier.score(x_ND)
  out = {"n": int(len(y)), "positives": int(y.sum()),
         "at_threshold": metrics_at(y, scores, classifier.threshold),
         "sweep": [metrics_at(y, scores, t) for t in SWEEP]}
  if len(set(y.tolist())) == 2:
    from sklearn.metrics import roc_auc_score
    out["roc_auc"] = round(float(roc_auc_score(y, scores)), 4)
  return out


def split_held_out(labels: Sequence[int], positive_label: int, fraction: float, seed: int):
  """Stratified train/held-out index split of the labelled sample."""
  from sklearn.model_selection import train_test_split
  y = binary_targets(labels, positive_label)
  idx = np.arange(len(y))
  stratify = y if min(np.bincount(y, minlength=2)) >= 2 else None
  return train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)


def train_and_evaluate(x_ND: np.ndarray, labels: Sequence[int | None], *,
                       kinds: Sequence[str] = KINDS, held_out: float = 0.2, threshold: float = 0.5,
                       positive_label: int = 3, seed: int = 0, workers: int = 1,
                       embedder: str | None = None) -> tuple[dict[str, Classifier], dict]:
  """Trains each kind on the same split; returns ({kind: classifier}, metrics report)."""
  labelled = np.array([l is not None for l in labels])
  if labelled.sum() < 10:
    raise ValueError(f"only {int(labelled.sum())} usable labels; need at least 10 to train and "
                     f"hold out (annotate a larger sample)")
  x_ND = x_ND[labelled]
  y = [int(l) for l in labels if l is not None]
  train_idx, test_idx = split_held_out(y, positive_label, held_out, seed)
  classifiers, report = {}, {"labels": len(y), "unscored_labels": int((~labelled).sum()),
                             "train": len(train_idx), "held_out": len(test_idx),
                             "positive_label": positive_label,
                             "label_histogram": np.bincount(y).tolist(), "models": {}}
  for kind in kinds:
    c = Classifier(kind=kind, threshold=threshold, positive_label=positive_label, seed=seed,
                   workers=workers, embedder=embedder)
    c.fit(x_ND[train_idx], [y[i] for i in train_idx])
    classifiers[kind] = c
    report["models"][kind] = evaluate(c, x_ND[test_idx], [y[i] for i in test_idx])
  return classifiers, report

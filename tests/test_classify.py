"""Classifier and selection: metrics on held-out labels, threshold sweep, clear errors, budgets."""

import json

import numpy as np
import pytest

from data_gen.filtering import classify, select


def _data(n=400, d=16, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  # Educational value rises with the first two coordinates; labels on the 0-5 scale.
  labels = np.clip(np.round(2.5 + 1.2 * x[:, 0] + 0.8 * x[:, 1] + 0.3 * rng.normal(size=n)), 0, 5)
  return x, [int(l) for l in labels]


def test_scoring_before_training_is_a_clear_error(tmp_path):
  with pytest.raises(classify.NotTrainedError, match="has not been trained"):
    classify.Classifier().score(np.zeros((2, 4)))
  with pytest.raises(classify.NotTrainedError, match="run the classify stage"):
    classify.Classifier.load(tmp_path / "missing.pkl")
  with pytest.raises(ValueError, match="kind"):
    classify.Classifier(kind="svm")


def test_both_models_learn_and_report_held_out_metrics():
  x, labels = _data()
  labels_with_gaps = labels[:-5] + [None] * 5
  classifiers, report = classify.train_and_evaluate(x, labels_with_gaps, held_out=0.25, seed=0)
  assert set(classifiers) == {"random_forest", "logistic_regression"}
  assert report["unscored_labels"] == 5 and report["held_out"] + report["train"] == 395
  for kind, m in report["models"].items():
    assert m["n"] == report["held_out"]
    assert m["at_threshold"]["f1"] > 0.8, (kind, m["at_threshold"])
    assert m["roc_auc"] > 0.9
    kept = [s["kept_fraction"] for s in m["sweep"]]
    assert len(kept) == len(classify.SWEEP) and kept == sorted(kept, reverse=True)


def test_metrics_at_by_hand():
  y = np.array([1, 1, 0, 0, 1])
  s = np.array([0.9, 0.4, 0.6, 0.1, 0.7])
  m = classify.metrics_at(y, s, 0.5)  # predicted 1,0,1,0,1: tp 2, fp 1, fn 1
  assert (m["precision"], m["recall"], m["f1"], m["accuracy"]) == (0.6667, 0.6667, 0.6667, 0.6)


def test_one_class_labels_rejected():
  x, _ = _data(50)
  with pytest.raises(ValueError, match="one side of positive_label"):
    classify.Classifier().fit(x, [1] * 50)


def test_save_load_roundtrip(tmp_path):
  x, labels = _data(120)
  c = classify.Classifier(kind="logistic_regression").fit(x, labels)
  c.save(tmp_path / "c.pkl")
  np.testing.assert_array_equal(classify.Classifier.load(tmp_path / "c.pkl").score(x), c.score(x))


def test_select_by_threshold_and_budget(tmp_path):
  scores = np.array([0.9, 0.2, 0.7, 0.5, 0.95])
  tokens = np.array([100, 50, 300, 10, 200])
  keep, thr = select.select(scores, tokens, threshold=0.6)
  assert keep.tolist() == [True, False, True, False, True] and thr == 0.6
  keep, thr = select.select(scores, tokens, token_budget=350)  # 0.95 (200) + 0.9 (100) fit
  assert keep.tolist() == [True, False, False, False, True] and thr == pytest.approx(0.9)
  assert tokens[keep].sum() <= 350
  nothing, none_thr = select.select(scores, tokens, token_budget=5)  # nothing fits
  assert not nothing.any() and none_thr is None
  with pytest.raises(ValueError, match="exactly one"):
    select.select(scores, tokens)
  ids = [f"r{i}" for i in range(5)]
  stats = select.Report(n_examples=2)
  for rid, s, t, k in zip(ids, scores, tokens, keep):
    stats.add(rid, s, int(t), bool(k))
  stats.save(tmp_path / "stats.npz")
  report = select.write_report(tmp_path, select.Report.load(tmp_path / "stats.npz"), thr,
                               {i: f"text of {i}" for i in ids})
  on_disk = json.loads((tmp_path / "report.json").read_text())
  assert on_disk["kept"] == 2 and on_disk["tokens_kept"] == 300 == report["tokens_kept"]
  assert on_disk["examples"]["top_kept"][0]["id"] == "r4"
  assert on_disk["examples"]["top_kept"][0]["head"] == "text of r4"
  assert on_disk["examples"]["borderline_dropped"][0]["id"] == "r2"
  assert on_disk["score_quantiles"]["0.5"] == pytest.approx(np.quantile(scores, 0.5))
  assert (tmp_path / "score_distribution.png").stat().st_size > 1000


@pytest.mark.parametrize("tasks", [1, 3])
def test_streaming_select_equals_in_memory_select(tasks):
  """The bounded-memory plan (a histogram pass, then tasks in order) keeps exactly the records
  `select` keeps, ties at the boundary included, and finds the same examples."""
  rng = np.random.default_rng(0)
  scores = np.round(rng.choice([0.1, 0.5, 0.73, 0.9], 300) + rng.integers(0, 3, 300) * 1e-5, 5)
  tokens = rng.integers(1, 50, 300)
  for budget in (0, 700, 2500, 10**9):
    keep, threshold = select.select(scores, tokens, token_budget=budget)
    per_bin = np.zeros(select.BINS, np.int64)
    np.add.at(per_bin, [select.score_bin(s) for s in scores], tokens)
    boundary, remaining = select.budget_boundary(per_bin, budget)
    plan = {"boundary_bin": boundary, "boundary_tokens": remaining}
    got, offset = [], 0
    for part in np.array_split(np.arange(300), tasks):
      selector = select.TaskSelector(plan, offset)
      got += [selector.keep(scores[i], tokens[i]) for i in part]
      offset = selector.used
    assert got == keep.tolist(), budget
  keep, _ = select.select(scores, tokens, token_budget=2500)
  assert 0 < keep.sum() < 300
  report = select.Report()
  for i, k in enumerate(keep):
    report.add(f"r{i}", scores[i], int(tokens[i]), bool(k))
  kept, dropped = np.nonzero(keep)[0], np.nonzero(~keep)[0]
  expected = {"top_kept": kept[np.argsort(-scores[kept], kind="stable")][:5],
              "borderline_kept": kept[np.argsort(scores[kept], kind="stable")][:5],
              "borderline_dropped": dropped[np.argsort(-scores[dropped], kind="stable")][:5],
              "bottom_dropped": dropped[np.argsort(scores[dropped], kind="stable")][:5]}
  assert {name: [int(rid[1:]) for rid, _ in b.ordered()] for name, b in report.best.items()} == {
      name: idx.tolist() for name, idx in expected.items()}


def test_token_budget_counts_with_the_real_tokenizer(tmp_path):
  """Select's token counts are a tokenizer's (the one the model trains with), not regex words."""
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.train_from_iterator(["def f(x): return x+1\n" * 50], trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<|endoftext|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.save(str(tmp_path / "tokenizer.json"))
  count = select.token_counter(str(tmp_path / "tokenizer.json"))
  text = "def f(x): return x+1\nprint(f(2))\n"
  assert count(text) == len(tok.encode(text).ids) != len(text.split())
  from data_gen.filtering import embed
  with pytest.raises(ValueError, match="no tokenizer"):
    select.token_counter("embedder", embed.HashingEmbedder())
  with pytest.raises(FileNotFoundError, match="--tokenizer takes"):
    select.token_counter(str(tmp_path / "missing.model"))

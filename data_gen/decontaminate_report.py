"""The decontamination report (paper §5, Table 3): what each measure flagged and, per tau, the
records removed beside the paper's counts and each benchmark's "similar" / "non-similar" split.
data_gen/decontaminate.py computes the matches; this module only reads them.
"""

from __future__ import annotations

from typing import Sequence

from data_gen import decontaminate as dc

# Paper Table 3 / §5: CodeExercises pruned against HumanEval. Removed counts are given for the
# two ends of the tau range only; "similar" = HumanEval problems with a close match.
PAPER = {"corpus": 879_500, "removed": {"0.95": 42_500, "0.8": 354_000},
         "similar_humaneval": {"0.95": 71, "0.9": 93, "0.85": 106, "0.8": 116}}


def build_report(result: dict, problems: Sequence[dc.Problem], config: dc.Config, embedder) -> dict:
  """report.json's content from a (merged) scan result: per measure, per tau."""
  pairs = result["pairs"]
  threshold = result.get("embed_threshold") if embedder is not None else None
  records = result["stats"]["records"]
  report = {
      "records": records,
      "benchmarks": {b: sum(p.benchmark == b for p in problems)
                     for b in dict.fromkeys(p.benchmark for p in problems)},
      "measures": {
          "ngram": {"n": config.ngram_n, "prunes": "ngram" in config.remove_by,
                    "flagged_records": len({p["id"] for p in pairs if p["ngram"]}),
                    "flagged_pairs": sum(p["ngram"] > 0 for p in pairs)},
          "embedding": ({"enabled": True, "embedder": embedder.name, "threshold": round(threshold, 4),
                         "threshold_from": ("given" if config.embed_threshold is not None else
                                            f"calibrated: {config.calibration_fpr:g} of "
                                            f"{config.calibration_size} standard-library "
                                            "functions under it"),
                         "prunes": "embedding" in config.remove_by,
                         "flagged_records": len({p["id"] for p in pairs if p["embedding_distance"] is not None
                                                 and p["embedding_distance"] <= threshold})}
                        if threshold is not None else
                        {"enabled": False, "reason": "no embedder configured (pass --embedder "
                                                     "codegen:DIR with the paper's CodeGen-Mono-350M); "
                                                     "embedding distance is off"}),
          "ast": {"prunes": "ast" in config.remove_by,
                  "unparsable_records": result["stats"]["unparsable"],
                  "candidate_pairs": result["stats"]["ast_pairs"]},
      },
      "remove_by": list(config.remove_by),
      "combine": config.combine,
      "paper": PAPER,
      "taus": {},
      "seconds": round(result["stats"]["seconds"], 2),
      "records_per_s": round(records / max(result["stats"]["seconds"], 1e-9), 1),
  }
  for tau in sorted(config.taus, reverse=True):
    removing = dc.removed_at(pairs, tau, config, threshold)
    removed_ids = sorted({p["id"] for p in removing})
    similar = {p["_problem"] for p in removing}
    split = {}
    for b in report["benchmarks"]:
      ids = [(i, p.task_id) for i, p in enumerate(problems) if p.benchmark == b]
      split[b] = {"similar": [t for i, t in ids if i in similar],
                  "non_similar": [t for i, t in ids if i not in similar]}
      split[b]["n_similar"], split[b]["n_non_similar"] = (len(split[b]["similar"]),
                                                          len(split[b]["non_similar"]))
    key = str(tau)
    paper_removed = PAPER["removed"].get(key)
    report["taus"][key] = {
        "removed": len(removed_ids),
        "removed_fraction": round(len(removed_ids) / max(records, 1), 5),
        "paper_removed": paper_removed,
        "paper_removed_fraction": (round(paper_removed / PAPER["corpus"], 5)
                                   if paper_removed is not None else None),
        "paper_similar_humaneval": PAPER["similar_humaneval"].get(key),
        "removed_by_ast": len({p["id"] for p in removing
                               if p["ast_match"] is not None and p["ast_match"] >= tau}),
        "removed_by_embedding": len({p["id"] for p in removing if threshold is not None
                                     and p["embedding_distance"] is not None
                                     and p["embedding_distance"] <= threshold}),
        "removed_ids": removed_ids, "split": split}
  return report


def summary_lines(report: dict) -> list[str]:
  """One line per tau: removed count and similar/non-similar split beside the paper's."""
  lines = []
  for tau, v in report["taus"].items():
    paper = ("paper: 42.5K-354K of 879.5K (4.8%-40.2%) over tau 0.95-0.8"
             if v["paper_removed"] is None else
             f"paper: {v['paper_removed'] / 1000:g}K of {PAPER['corpus'] / 1000:g}K "
             f"({100 * v['paper_removed_fraction']:.1f}%)")
    splits = ", ".join(f"{b} {s['n_similar']} similar / {s['n_non_similar']} non-similar"
                       for b, s in v["split"].items())
    if v["paper_similar_humaneval"] is not None and "humaneval" in v["split"]:
      splits += f" (paper: {v['paper_similar_humaneval']} similar)"
    lines.append(f"tau {tau}: removed {v['removed']} of {report['records']} "
                 f"({100 * v['removed_fraction']:.1f}%) [{paper}]; {splits}")
  return lines

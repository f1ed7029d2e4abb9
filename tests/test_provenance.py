"""Which run of an output directory a command continues, and when it is refused."""

import pytest

from data_gen.provenance import ProvenanceError, check_shard_layout, choose_run, rank_dir

SETTINGS = {"model": "gpt-3.5-turbo", "seed": 0, "temperature": 1.0, "prompt_version": "x-2"}


def test_first_run_then_same_settings_continue_it():
  run, runs = choose_run({}, SETTINGS, new_run=False, has_records=False)
  assert run == 0 and runs == [{"run": 0, "settings": SETTINGS}]
  assert choose_run({"generation_runs": runs}, dict(SETTINGS), new_run=False, has_records=True) == (0, runs)


def test_changed_settings_are_refused_with_the_keys_named_or_become_a_new_run():
  meta = {"generation_runs": [{"run": 0, "settings": SETTINGS}]}
  changed = {**SETTINGS, "temperature": 0.7, "prompt_version": "x-3"}
  with pytest.raises(ProvenanceError, match=r"prompt_version: 'x-2' -> 'x-3'; temperature: 1.0 -> 0.7"):
    choose_run(meta, changed, new_run=False, has_records=True)
  run, runs = choose_run(meta, changed, new_run=True, has_records=True)
  assert run == 1 and runs[1] == {"run": 1, "settings": changed}
  # Later, either run's settings continue that run.
  assert choose_run({"generation_runs": runs}, SETTINGS, new_run=False, has_records=True)[0] == 0
  assert choose_run({"generation_runs": runs}, changed, new_run=False, has_records=True)[0] == 1


def test_a_manifest_from_before_run_records_is_checked_on_what_it_recorded():
  legacy = {"model": "gpt-4o-mini", "seed": 0}
  with pytest.raises(ProvenanceError, match="model: 'gpt-4o-mini' -> 'gpt-3.5-turbo'"):
    choose_run(legacy, SETTINGS, new_run=False, has_records=True)
  run, runs = choose_run({**legacy, "model": "gpt-3.5-turbo"}, SETTINGS, new_run=False,
                         has_records=True)
  assert run == 0 and runs == [{"run": 0, "settings": SETTINGS}]
  # Records with no recorded settings at all cannot be vouched for.
  with pytest.raises(ProvenanceError, match="unrecorded"):
    choose_run({}, SETTINGS, new_run=False, has_records=True)


def test_ranks_of_different_world_sizes_do_not_mix(tmp_path):
  (tmp_path / "rank-00000-of-00004").mkdir()
  check_shard_layout(str(tmp_path), 4)
  with pytest.raises(ProvenanceError, match="sharded 4 ways"):
    check_shard_layout(str(tmp_path), 2)
  assert rank_dir("out", 0, 1) == "out" and rank_dir("out", 2, 8) == "out/rank-00002-of-00008"


def test_a_new_run_beside_unrecorded_records_is_run_one():
  run, runs = choose_run({}, SETTINGS, new_run=True, has_records=True)
  assert run == 1 and runs == [{"run": 1, "settings": SETTINGS}]

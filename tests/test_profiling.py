"""profile_steps parsing (the trace itself: tests/test_train.py, a bf16 run with a profile)."""

import pytest

from phi1 import profiling


@pytest.mark.parametrize("value, expected", [((), None), (None, None), ((2, 5), (2, 5)),
                                             ([0, 1], (0, 1))])
def test_windows(value, expected):
  assert profiling.parse_window(value) == expected


@pytest.mark.parametrize("value", [(5, 2), (3,), ("a", "b"), (-1, 2)])
def test_bad_windows_say_what_to_write(value):
  with pytest.raises(ValueError, match=r"profile_steps must be \(start, stop\)"):
    profiling.parse_window(value)

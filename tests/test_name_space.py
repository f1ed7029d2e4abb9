"""The exercise function-name space: size, decoding, and benchmark names kept out of it."""

from data_gen.name_space import TopicNames, benchmark_names, is_excluded, topic_name_spaces, words
from data_gen.tables import load_table


def test_words_normalise_case_separators_and_plurals():
  assert words("removeDuplicates") == words("remove_duplicate") == ("remove", "duplicate")
  assert words("sort_numbers") == words("SortNumber") == ("sort", "number")
  assert words("class") == ("class",)  # -ss is not a plural


def test_benchmark_names_cover_humaneval_and_mbpp():
  names = benchmark_names()
  assert {"has_close_elements", "sort_numbers", "below_zero"} <= names  # HumanEval
  assert {"min_cost", "similar_elements", "differ_At_One_Bit_Pos"} <= names  # MBPP tasks 1, 2, 6
  assert len(names) > 1000
  assert is_excluded("SortNumbers") and is_excluded("remove_duplicate") is is_excluded("remove_duplicates")


def test_benchmark_names_and_their_variants_are_excluded():
  space = TopicNames(["sort", "count"], ["unique"], ["numbers", "words", "vowels"], ["fast"],
                     frozenset(words(n) for n in ["sort_numbers", "countVowels", "count_unique_words"]))
  listed = [space[i] for i in range(len(space))]
  every = {space.decode(i) for i in range(space.total)}
  assert space.total == 2 * 2 * 3 * 2 and len(listed) == len(set(listed))
  # sort_numbers and every modifier/qualifier variant of it; count_vowels likewise; and
  # count_unique_words exactly (its core, count_words, is not a benchmark name).
  gone = {"sort_numbers", "sort_unique_numbers", "sort_numbers_fast", "sort_unique_numbers_fast",
          "count_vowels", "count_unique_vowels", "count_vowels_fast", "count_unique_vowels_fast",
          "count_unique_words"}
  assert every - set(listed) == gone
  assert "count_words" in listed and "count_unique_words_fast" in listed


def test_default_space_is_large_and_holds_no_benchmark_name():
  table = load_table("exercises")
  spaces = topic_name_spaces(table)
  assert sum(len(s) for s in spaces) > 1_500_000
  banned = {words(n) for n in benchmark_names()}
  # The default vocabulary does produce benchmark names (e.g. HumanEval's sort_numbers) ...
  excluded = {space.decode(e) for space in spaces for e in space.excluded}
  assert "sort_numbers" in excluded and "count_vowels" in excluded and len(excluded) > 10_000
  # ... and none is left among the allowed names (a sample of each topic's).
  for space in spaces:
    step = max(1, len(space) // 3000)
    assert not any(words(space[i]) in banned for i in range(0, len(space), step))

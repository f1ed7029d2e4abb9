"""`python -m data_gen textbooks|exercises|report|filter|dedup|decontaminate ...` (see --help of each).

    export OPENAI_API_KEY=...
    python -m data_gen textbooks --n 20000 --out data/textbooks --model gpt-3.5-turbo --concurrency 64 --budget-usd 50
    python -m data_gen exercises --n 100000 --out data/exercises --model gpt-3.5-turbo --execute
    python -m data_gen exercises --n 880000 --out data/exercises --model gpt-3.5-turbo --plan   # no requests
    python -m data_gen report data/exercises

`--n` is the number of valid records DIR holds when the command returns: rerunning the same command
tops up (never overshoots) and pays nothing for answers it already has (they are in DIR/cache.sqlite).
"""

import sys

USAGE = "usage: python -m data_gen {textbooks,exercises,report,filter,dedup,decontaminate} ..."


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ("-h", "--help"):
    print(USAGE + "\n\n" + __doc__)
    return 0 if argv else 2
  command, rest = argv[0], argv[1:]
  if command in ("textbooks", "exercises"):
    from data_gen.generate_cli import main as generate_main
    return generate_main(command, rest)
  if command == "report":
    from data_gen.report import main as report_main
    return report_main(rest)
  if command == "filter":  # lazy: the filtering stack (sklearn, embedders) loads only when asked
    from data_gen.filtering.cli import main as filter_main
    return filter_main(rest) or 0
  if command == "dedup":
    from data_gen.filtering.dedup import main as dedup_main
    return dedup_main(rest)
  if command == "decontaminate":
    from data_gen.decontaminate_cli import main as decontaminate_main
    return decontaminate_main(rest) or 0
  print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())

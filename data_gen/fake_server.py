"""`python -m data_gen.fake_server --port P [--faults ...]`: the loopback OpenAI-compatible server the
tests use, as a command, to rehearse a pipeline offline before paying for it.

    python -m data_gen.fake_server --port 8000 --rpm 120 --window-s 10 --faults 500,refusal \\
        --fault-rate 0.05 &
    export OPENAI_API_KEY=anything
    python -m data_gen textbooks --n 50 --out /tmp/tb --model gpt-4o-mini \\
        --base-url http://127.0.0.1:8000/v1
    python -m data_gen filter ... --base-url http://127.0.0.1:8000/v1   # labels: the offline judge

It answers chat and completion requests with canned text shaped like what the prompt asks for
(exercises, textbook sections, topic lists, the labelling prompt's verdict), sends OpenAI's
rate-limit headers and enforces the window, injects the named faults, and runs the Batch API with
the chosen terminal states. Every behaviour is described in data_gen/testing/server.py.
"""

import argparse
import sys

from data_gen.testing.fake_openai import serve_forever
from data_gen.testing.server import BATCH_OUTCOMES, FAULTS


def _kinds(value: str, known: tuple) -> list[str]:
  kinds = [k for k in value.split(",") if k]
  unknown = [k for k in kinds if k not in known]
  if unknown:
    raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from {', '.join(known)}")
  return kinds


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m data_gen.fake_server", description=__doc__.split("\n")[0])
  p.add_argument("--port", type=int, default=8000, help="loopback port (0: any free one)")
  p.add_argument("--faults", type=lambda v: _kinds(v, FAULTS), default=[],
                 help=f"comma-separated fault kinds drawn at --fault-rate: {', '.join(FAULTS)}")
  p.add_argument("--fault-rate", type=float, default=0.05, help="share of attempts faulted")
  p.add_argument("--first-faults", type=lambda v: _kinds(v, FAULTS), default=[],
                 help="faults for the first requests, one each, in arrival order")
  p.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
  p.add_argument("--rpm", type=int, default=None, help="requests per window (429 past it)")
  p.add_argument("--tpm", type=int, default=None, help="tokens per window (429 past it)")
  p.add_argument("--window-s", type=float, default=60.0, help="rate window length")
  p.add_argument("--batch-delay", type=float, default=1.0, help="seconds a batch stays in_progress")
  p.add_argument("--batch-outcomes", type=lambda v: _kinds(v, BATCH_OUTCOMES), default=[],
                 help=f"terminal states of the first batches, in order: {', '.join(BATCH_OUTCOMES)}")
  p.add_argument("--seed", type=int, default=0)
  return p


def main(argv: list[str] | None = None) -> int:
  args = parser().parse_args(argv)
  if not 0.0 <= args.fault_rate <= 1.0:
    print("error: --fault-rate must be in [0, 1]", file=sys.stderr)
    return 2
  options = dict(fault_rate=args.fault_rate if args.faults else 0.0, faults=args.faults,
                 first_faults=args.first_faults, latency_s=args.latency, rpm=args.rpm,
                 tpm=args.tpm, window_s=args.window_s, batch_delay_s=args.batch_delay,
                 batch_outcomes=args.batch_outcomes, seed=args.seed)
  try:
    serve_forever(options, args.port, announce=lambda port: print(
        f"fake OpenAI server on http://127.0.0.1:{port}/v1 (Ctrl-C stops it)", flush=True))
  except KeyboardInterrupt:
    pass
  except OSError as e:
    print(f"error: cannot listen on 127.0.0.1:{args.port}: {e.strerror}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())

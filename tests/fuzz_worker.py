"""The fuzz suite's worker process: runs cases and prints one JSON line per case.

    python tests/fuzz_worker.py CASES.jsonl START STOP   cases START..STOP-1 of the file
    python tests/fuzz_worker.py --case '{"group": ...}'  one case, to reproduce a report

Once imported it prints ``{"ready": true}``; then a line per case,
``{"index": i, "outcome": ..., "detail": ...}``, flushed, so
that the harness (fuzz_harness.py) knows which case was running when the process
died or stopped answering. Outcomes (crash and hang are the harness's):

  correct        checked: the same call on a plain C-contiguous array, a numpy reference
  unchecked      no error, and nothing to check the values against
  clean_error    ValueError / TypeError (corenet's ShapeError, DTypeError, ModelFileError)
                 or PluginError, whose message names the layer, loss, optimizer, model or file
  unclear_error  any other exception (IndexError, KeyError, MemoryError, ZeroDivisionError,
                 AssertionError ...), or a message that names none of them
  wrong_result   a result that differs from the reference, or a value that must be refused
  harness_error  a bug of the fuzz suite itself
"""
from __future__ import annotations

import json
import os
import resource
import sys
import traceback
import warnings

import numpy as np

# The worker must not take the machine's memory if corenet tries a huge allocation:
# above this, numpy's allocation fails at once (and the case shows it).
ADDRESS_SPACE_LIMIT = 8 << 30


def run_case(case: dict) -> dict:
    import fuzz_layer_cases
    import fuzz_other_cases
    from fuzz_checks import Raised, WrongResult, judge_error, outcome

    group = case["group"]
    module = fuzz_layer_cases if group in fuzz_layer_cases.RUNNERS else fuzz_other_cases
    try:
        return module.RUNNERS[group](case)
    except Raised as raised:
        # "called before forward" is a RuntimeError, as in PyTorch.
        order = "before forward" in raised.step or case.get("backward_first") \
            or case.get("scenario") == "backward_first"
        return judge_error(raised, module.names_of(case), allow_runtime=bool(order))
    except WrongResult as wrong:
        return outcome("wrong_result", str(wrong))
    except Exception:  # noqa: BLE001 - a bug of the fuzz suite, reported as such
        return outcome("harness_error", traceback.format_exc(limit=6))


def register_plugins() -> None:
    """The plugin modules CORENET_FUZZ_PLUGINS names (comma-separated), registered as
    an installed plugin would be: the test process has them too."""
    import importlib

    from corenet.registry import registry

    for name in filter(None, os.environ.get("CORENET_FUZZ_PLUGINS", "").split(",")):
        registry.register(importlib.import_module(name), name, "fuzz-plugin", "0")


def main(argv: list) -> None:
    register_plugins()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or hard > ADDRESS_SPACE_LIMIT:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, hard))
    warnings.simplefilter("ignore")
    np.seterr(all="ignore")
    if argv[1] == "--case":
        print(json.dumps(run_case(json.loads(argv[2])), indent=1))
        return
    path, start, stop = argv[1], int(argv[2]), int(argv[3])
    with open(path) as stream:
        cases = [json.loads(line) for line in stream]
    import fuzz_layer_cases  # noqa: F401 - imported before "ready"
    import fuzz_other_cases  # noqa: F401
    from corenet.registry import registry

    registry.load()
    sys.stdout.write('{"ready": true}\n')  # the time a case may take starts now
    sys.stdout.flush()
    for index in range(start, stop):
        record = run_case(cases[index])
        record["index"] = index
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv)

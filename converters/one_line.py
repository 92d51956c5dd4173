"""What both converter command lines do with an input they cannot convert: one line, exit status 2."""

import sys
from typing import Any, Callable


def one_line_errors(main_fn: Callable[[list], Any], errors: tuple) -> Callable[[list], Any]:
    """`main_fn`, with each of `errors` printed as one line "error: ..." on stderr (exit status 2): a file
    that cannot be converted, a destination in the way. Any other exception, a bug, keeps its traceback."""

    def run(argv):
        try:
            return main_fn(argv)
        except errors as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return run

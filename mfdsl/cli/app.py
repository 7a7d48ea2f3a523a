"""The ``mfdsl`` click group and its error handling; the commands add themselves to it."""
from __future__ import annotations

import os
import sys
import warnings
from typing import Any, NoReturn

import click

from .. import __version__
from ..errors import EXIT_COMPILER, EXIT_INTERRUPTED, EXIT_USAGE, UserError


def report(err: UserError, prefix: str = "") -> NoReturn:
    """The one mapping from a user error to what the user sees: its message (``prefix``
    first, e.g. a rank) on stderr, and its exit code."""
    click.echo(prefix + err.render(), err=True)
    sys.exit(err.exit_code)


class _Group(click.Group):
    """Turns the project's own errors into located messages and exit codes, never a
    traceback (set MFDSL_DEBUG=1 to see one)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except SystemExit as done:
            _leave_process_group(done.code)
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as err:
            report(err)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("mfdsl: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if os.environ.get("MFDSL_DEBUG"):
                raise
            if isinstance(exc, (OSError, ValueError)):
                click.echo(f"error: {exc}", err=True)
                sys.exit(EXIT_USAGE)
            if _is_compile_failure(exc):
                first = next((ln for ln in str(exc).splitlines() if ln.strip()), "")
                click.echo(f"error: torch.compile failed in {type(exc).__name__}: {first}\n"
                           "(a compiler failure, not an error in the spec: run again with "
                           "--no-compile, or set MFDSL_DEBUG=1 for the traceback)", err=True)
                sys.exit(EXIT_COMPILER)
            click.echo(f"mfdsl: internal error: {type(exc).__name__}: {exc}\n"
                       "(set MFDSL_DEBUG=1 for the traceback)", err=True)
            sys.exit(EXIT_COMPILER)  # an internal error shares the compiler's code


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_shown_before = [warnings.showwarning]  # what shows the other packages' warnings


def show_warning(message: Any, category: type, filename: str, lineno: int,
                 file: Any = None, line: Any = None) -> None:
    """mfdsl's own warnings as one ``warning: ...`` line on stderr, as the runner's; other
    packages' warnings as they were shown before (Python's form)."""
    if os.path.abspath(filename).startswith(_PACKAGE):
        click.echo(f"warning: {message}", err=True)
        return
    _shown_before[0](message, category, filename, lineno, file, line)


def _show_warnings_in_house_style() -> None:
    if warnings.showwarning is not show_warning:
        _shown_before[0] = warnings.showwarning
        warnings.showwarning = show_warning


def _leave_process_group(code: Any) -> None:
    """A rank of a multi-process run ends here (:func:`..runner.distributed.leave_process`)."""
    distributed = sys.modules.get("mfdsl.runner.distributed")  # not imported: never joined
    if distributed is None:
        return
    if isinstance(code, str):  # sys.exit("message"): printed, exit status 1
        click.echo(code, err=True)
        code = 1
    distributed.leave_process(0 if code is None else int(code))


def _is_compile_failure(exc: BaseException) -> bool:
    """An exception from torch.compile's own machinery (dynamo, inductor, Triton)."""
    return any(type(e).__module__.startswith(("torch._dynamo", "torch._inductor", "triton"))
               and type(e).__name__ in ("BackendCompilerFailed", "InductorError",
                                        "CppCompileError", "CUDACompileError",
                                        "TritonUnavailableError")
               for e in (exc, exc.__cause__) if e is not None)


@click.group(cls=_Group,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mfdsl")
def main() -> None:
    """mfdsl: write a MetaFormer as text, get exactly that model.

    \b
    Specs are .mf files (Lark grammar) or .yaml files (JSON Schema); specs/ holds the
    paper's model zoo. Typical use:
      mfdsl validate specs/*.mf
      mfdsl compile specs/caformer_s18.mf
      mfdsl train specs/randformer.yaml
    """
    from ..plugins import load_plugins

    _show_warnings_in_house_style()
    load_plugins()

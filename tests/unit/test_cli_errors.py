"""The CLI's one error mapping: any layer's LabError, a refused NATS user, a disk error each read as one line."""

from __future__ import annotations

import errno

import pytest
import typer
from pydantic import BaseModel
from typer.testing import CliRunner

from agents.lit.errors import RateLimited
from agents.minds.llm.errors import MindFailed
from bus.errors import ConnectError, LabError, MindError, PermissionDenied
from bus.schema import TemplateError
from services.cli.app import UsageError
from services.cli.errors import LabTyper, describe
from services.executors.kubernetes import QuotaExceededError

LAYERS = [
    ConnectError("cannot connect to NATS at nats://127.0.0.1:1: credentials refused"),  # bus
    PermissionDenied("the NATS server refuses user 'runner'"),  # bus
    TemplateError("unknown template 'nope'"),  # agents
    RateLimited("openalex kept answering 429"),  # agents.lit
    MindFailed("pi", "ideas", "no valid answer after 3 tries:\n  bad JSON"),  # agents.minds.llm
    QuotaExceededError("quota exceeded in namespace research"),  # services.executors
    UsageError("unknown project 'nosuch'"),  # services.cli.app
]


@pytest.mark.parametrize("error", LAYERS, ids=lambda e: type(e).__name__)
def test_a_lab_error_from_each_layer_is_one_line_and_exit_2(error: LabError) -> None:
    assert isinstance(error, LabError)
    app = LabTyper(error_prefix="lab: error: ")

    @app.command()
    def boom() -> None:
        raise error

    @app.command()
    def other() -> None:  # two commands, so typer keeps the subcommand name
        pass

    result = CliRunner().invoke(app, ["boom"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines == [f"lab: error: {describe(error)}"] and "Traceback" not in result.output
    assert "\n" not in describe(error) and describe(error)  # type: ignore[operator]


def test_the_mapping_reads_each_kind_of_error() -> None:
    assert describe(MindFailed("pi", "ideas", "timed out\nafter 2 tries")) == "pi.ideas: timed out after 2 tries"
    assert isinstance(MindFailed("pi", "ideas", "x"), MindError)  # the workflow catches any mind's failure by this
    assert describe(OSError(errno.ENOENT, "No such file or directory", "/nope/x.yaml")) == "/nope/x.yaml: No such file or directory"

    class Budget(BaseModel):
        usd: float
        steps: int

    with pytest.raises(Exception) as bad:
        Budget.model_validate({"usd": "lots"})
    assert describe(bad.value) == "invalid Budget: usd: Input should be a valid number, unable to parse string as a number (and 1 more)"
    assert describe(RuntimeError("a bug")) is None  # a bug keeps its traceback


def test_a_bug_is_not_hidden_behind_one_line() -> None:
    app = LabTyper()

    @app.command()
    def boom() -> None:
        raise RuntimeError("a bug")

    result = CliRunner().invoke(app, [])
    assert isinstance(result.exception, RuntimeError)


def test_commands_keep_their_signature_for_typer() -> None:
    app = LabTyper()

    @app.command()
    def hello(name: str = typer.Option("x", "--name")) -> None:
        typer.echo(f"hi {name}")

    assert CliRunner().invoke(app, ["--name", "y"]).stdout == "hi y\n"


def test_a_long_novelty_verdict_is_cut_at_a_word_boundary() -> None:
    """The conversation line of a verdict: cut with an ellipsis, never mid-word ("change te (refs:" was printed)."""
    from bus.schema import Envelope, NoveltyVerdict
    from services.read.describe import describe

    words = "the same change tested before for the same effect in the same setting " * 4
    line = describe(Envelope(project="p", sender="literature", recipient="pi",
                             body=NoveltyVerdict(idea_id="wd-1", novel=False, justification=words)))
    said = line.split(" — ", 1)[1]
    assert said.endswith("…") and len(said) <= 161
    assert words.startswith(said[:-1]) and words[len(said) - 1] == " "  # the cut falls between words

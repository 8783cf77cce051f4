"""The writer on a constructed project: real numbers, real hardware, real citations (its PDF: tests/integration/test_writer_pdf.py)."""

from __future__ import annotations

import math
import re

import pytest

from agents.analyst.workflow import build_report
from agents.base import Context
from agents.writer import citations, markup, numbers
from agents.writer.offline import make
from agents.writer.workflow import ROLE
from bus.schema import (
    AnalysisRequest,
    CoPINote,
    DraftReady,
    DraftRequest,
    Envelope,
    FinalInfo,
    Idea,
    JobEnvironment,
    MetricStat,
    Reference,
    RunRecord,
    Usage,
)
from tests.fakes import MemoryStore

SPEC = {
    "name": "toy", "title": "Toy Grokking", "task": "Learn modular addition with a small transformer.",
    "knobs": {
        "weight_decay": {"type": "float", "default": 0.1, "min": 0.0, "max": 2.0},
        "steps": {"type": "int", "default": 800, "min": 100, "max": 5000, "fairness": True},
    },
    "metrics": {"val_acc": {"direction": "higher", "primary": True}, "val_loss": {"direction": "lower"}},
    "baseline": {}, "seeds": 3,
}
ENV = JobEnvironment(hostname="node-7", platform="Linux-6.1-x86_64", python="3.11.9", cpu="AMD EPYC 7763 64-Core Processor",
                     cpu_count=2, device="cpu", packages={"torch": "2.13.0", "numpy": "2.4.6"})
IDEAS = [
    Idea(id="wd-1", title="Stronger weight decay", hypothesis="More weight decay speeds up generalization.",
         falsification="Validation accuracy is not higher than the baseline's.", changes={"weight_decay": 1.0}),
    Idea(id="wd-0", title="No weight decay", hypothesis="Weight decay is unnecessary.",
         falsification="Validation loss rises.", changes={"weight_decay": 0.0}),
]
REFS = [
    Reference(key="power2022grokking", title="Grokking: Generalization Beyond Overfitting on Small Algorithmic Datasets",
              authors=["Alethea Power", "Yuri Burda", "Harri Edwards"], year=2022, venue="arXiv",
              bibtex="@article{power2022,\n  title={Grokking: Generalization Beyond Overfitting on Small Algorithmic Datasets},\n"
                     "  author={Power, Alethea and Burda, Yuri and Edwards, Harri},\n  journal={arXiv preprint arXiv:2201.02177},\n  year={2022}\n}"),
    Reference(key="loshchilov2019adamw", title="Decoupled Weight Decay Regularization", authors=["Ilya Loshchilov", "Frank Hutter"],
              year=2019, venue="ICLR",
              bibtex="@inproceedings{loshchilov2019adamw, title={Decoupled Weight Decay Regularization}, "
                     "author={Loshchilov, Ilya and Hutter, Frank}, booktitle={ICLR}, year={2019}}"),
]


def run(job, idea, acc, loss, overrides=None, env=ENV, seeds=None, artifacts=()):
    seeds = seeds or list(range(len(acc)))
    fi = FinalInfo(seeds=seeds, metrics={
        "val_acc": MetricStat(mean=sum(acc) / len(acc), stderr=0.01, values=acc),
        "val_loss": MetricStat(mean=sum(loss) / len(loss), stderr=0.01, values=loss)})
    return RunRecord(job_id=job, experiment_id=f"exp-{job}", idea_id=idea, overrides=overrides or {}, seeds=seeds,
                     status="succeeded", final_info=fi, environment=env, artifacts=list(artifacts), wall_s=41.27)


RUNS = [
    run("job-b1", "baseline", [0.712, 0.705, 0.731], [1.212, 1.25, 1.19], artifacts=["proj/runs/job-b1/curves.png"]),
    run("job-w1", "wd-1", [0.934, 0.951, 0.947], [0.412, 0.405, 0.43], overrides={"weight_decay": 1.0}),
    run("job-w0", "wd-0", [0.70, 0.74, 0.69], [1.3, 1.21, 1.26], overrides={"weight_decay": 0.0}),
    RunRecord(job_id="job-x9", experiment_id="exp-x9", idea_id="wd-0", overrides={"weight_decay": 0.0}, seeds=[3],
              status="failed", reason="timeout after 600 s"),
]


def png() -> bytes:
    from agents.analyst.figures import bar_chart
    from agents.plotting import Bar
    return bar_chart("val_acc", "higher", [Bar("baseline", 0.7, 0.01, 3)])


def request(runs=RUNS, refs=REFS, **kw) -> DraftRequest:
    report, _ = build_report("proj", AnalysisRequest(round=1, spec=SPEC, runs=runs))
    report.figures = ["proj/figures/round-1/val_acc.png"]
    return DraftRequest(round=1, spec=SPEC, direction="Does weight decay speed up grokking?", ideas=IDEAS, report=report,
                        references=refs, notes=[CoPINote(id="n1", text="Keep runs under 10 minutes.")],
                        usage={"writer": Usage(prompt_tokens=1200, completion_tokens=345, cost_usd=0.0123)}, **kw)


async def write(req: DraftRequest, mind=None) -> tuple[DraftReady, MemoryStore]:
    store = MemoryStore()
    for name in ["proj/figures/round-1/val_acc.png", "proj/runs/job-b1/curves.png"]:
        await store.put(name, png())
    ctx = Context(project="proj", role="writer", state=None, artifacts=store, mind=mind or make(0, {}))
    await ROLE().handle(Envelope(project="proj", sender="pi", recipient="writer", body=req), ctx)
    (body, to), = ctx.outputs
    assert to == "pi" and isinstance(body, DraftReady)
    return body, store


# An independent reading of the paper: digits inside words, ids and versions are not numbers; 12.5x is.
TOKEN = re.compile(r"(?<![\w.\-])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?!\d|\.\d)")


def evidence(req: DraftRequest) -> tuple[list[float], list[str]]:
    nums, strs = [], []

    def walk(o):
        if isinstance(o, bool) or o is None:
            return
        if isinstance(o, (int, float)):
            nums.append(float(o))
        elif isinstance(o, str):
            if re.search(r"\d", o):
                strs.append(o)
        elif isinstance(o, dict):
            [walk(k) or walk(v) for k, v in o.items()]
        elif isinstance(o, list):
            nums.append(float(len(o)))
            [walk(v) for v in o]

    walk(req.model_dump(mode="json"))
    return nums, sorted(set(strs), key=len, reverse=True)


def printed_as(token: str, v: float) -> bool:
    x = float(token)
    mant = token.lower().split("e")[0]
    if "." not in mant:
        return x == v
    places = len(mant.split(".")[1]) - (int(token.lower().split("e")[1]) if "e" in token.lower() else 0)
    return abs(x - v) <= 0.5 * 10 ** -places + 1e-12


@pytest.fixture(scope="module")
def drafted():
    import asyncio
    req = request()
    out, store = asyncio.run(write(req))
    return req, out, store


def test_every_number_comes_from_the_evidence(drafted):
    req, out, store = drafted
    md = store.data[out.markdown].decode()
    nums, strs = evidence(req)
    masked = md
    for s in strs:
        masked = masked.replace(s, " ")
    found = TOKEN.findall(masked)
    assert len(found) > 40  # the paper really prints its results
    for tok in found:
        assert float(tok) in out.numbers, f"{tok} printed but not in DraftReady.numbers"
        assert any(printed_as(tok, v) for v in nums), f"{tok} has no source in the report, runs or request"
    # the headline numbers are there, formatted once
    c = next(c for c in req.report.comparisons if c.idea_id == "wd-1" and c.metric == "val_acc")
    assert numbers.fmt(c.idea_mean) in md and numbers.fmt(c.p_value) in md and numbers.fmt(c.effect_size) in md


def test_lower_is_better_wording_and_honest_headline(drafted):
    req, out, store = drafted
    md = store.data[out.markdown].decode()
    loss = next(c for c in req.report.comparisons if c.idea_id == "wd-1" and c.metric == "val_loss")
    assert (f"`wd-1` lowered val_loss from {numbers.fmt(loss.baseline_mean)} (the baseline) to {numbers.fmt(loss.idea_mean)} "
            "(lower is better") in md
    # Significant after correction but never confirmed on fresh seeds: no headline claim.
    assert loss.verdict == "better"
    assert md.splitlines()[0] == "# No replicated improvement in val_acc on Toy Grokking: significant gains did not hold on fresh seeds"
    assert "No confirmation run on fresh seeds was possible" in md
    assert "timeout after 600 s" in md  # the failed run and its reason


def test_hardware_only_from_recorded_environments(drafted):
    req, out, store = drafted
    md = store.data[out.markdown].decode()
    assert "AMD EPYC 7763 64-Core Processor" in md and "torch 2.13.0" in md and "Python 3.11.9" in md
    for word in ["NVIDIA", "A100", "H100", "Intel", "CUDA", "GPUs "]:
        assert word not in md, word
    tex = store.data[out.tex].decode()
    assert "AMD EPYC 7763 64-Core Processor" in tex


async def test_no_environment_says_not_recorded():
    runs = [r.model_copy(update={"environment": None}) for r in RUNS]
    out, store = await write(request(runs=runs))
    md = store.data[out.markdown].decode()
    assert "Hardware and software versions: not recorded." in md
    assert "EPYC" not in md and "torch" not in md


def test_citations_resolve_and_bib_uses_the_request_keys(drafted):
    req, out, store = drafted
    tex, bib = store.data[out.tex].decode(), store.data[out.bib].decode()
    assert citations.bib_keys(bib) == {"power2022grokking", "loshchilov2019adamw"}  # the entry key is rewritten
    assert citations.tex_cite_keys(tex) == {"power2022grokking", "loshchilov2019adamw"}
    assert citations.unresolved(tex, bib) == []
    assert "\\section{Related Work}" in tex and "\\bibliography{references}" in tex


def test_appendix_has_usage_and_notes(drafted):
    req, out, store = drafted
    md = store.data[out.markdown].decode()
    assert "| writer | 1200 | 345 | 0.0123 |" in md
    assert "Keep runs under 10 minutes." in md


def test_markup_escapes_and_cites():
    tex = markup.to_tex("50% of a_b & $c [@k1; @nope]\n\n- one\n- `x_y`", {"k1"})
    assert "50\\% of a\\_b \\& \\$c~\\citep{k1}" in tex
    assert "\\begin{itemize}" in tex and "\\texttt{x\\_y}" in tex and "nope" not in tex


def test_fmt_is_the_one_format():
    xs = (3, 0.5, 0.123456, -0.0004567, 12345.678, 0.0, 16.0002, 2.0, 0.99996, 1234.56)
    assert [numbers.fmt(x) for x in xs] == ["3", "0.5", "0.1235", "-4.57e-04", "12345.7", "0", "16.0", "2", "1.0", "1234.6"]
    with pytest.raises(ValueError):
        numbers.fmt(math.nan)


async def test_a_gain_from_an_unfair_knob_is_not_the_headline():
    unfair = [RUNS[0], run("job-s1", "wd-1", [0.934, 0.951, 0.947], [0.412, 0.405, 0.43], overrides={"steps": 4000})]
    out, store = await write(request(runs=unfair))
    md = store.data[out.markdown].decode()
    assert md.splitlines()[0].startswith("# No fair improvement in val_acc")
    assert "No tested change improved val_acc against a matching baseline." in md.split("## Conclusion")[1]
    assert "Unfair baseline: idea 'wd-1' changes the fairness knob 'steps'" in md  # in the threats to validity


async def test_only_a_replicated_gain_makes_the_headline():
    again = [run("job-b9", "baseline", [0.70, 0.72, 0.71], [1.2, 1.22, 1.21], seeds=[10, 11, 12]),
             run("job-w9", "wd-1", [0.93, 0.95, 0.94], [0.41, 0.40, 0.42], seeds=[10, 11, 12], overrides={"weight_decay": 1.0})]
    confirmed = RUNS + again
    report, _ = build_report("proj", AnalysisRequest(round=1, spec=SPEC, runs=confirmed, confirmation=["exp-job-b9", "exp-job-w9"]))
    report.figures = ["proj/figures/round-1/val_acc.png"]
    req = request().model_copy(update={"report": report})
    out, store = await write(req)
    md = store.data[out.markdown].decode()
    # A knob idea is named by the value its runs recorded, not by the title the PI gave it.
    assert md.splitlines()[0] == "# weight_decay = 1: a significant, replicated improvement in val_acc on Toy Grokking"
    assert "It replicated on 3 fresh seeds per arm" in md
    assert "The evidence supports one improvement:" in md.split("## Conclusion")[1]
    assert "replicated on fresh seeds." in md.split("## Conclusion")[1]


def test_figure_caption_names_the_test_that_ran():
    """The arms of RUNS share seeds, so the figure's p-values come from the paired test, not Welch's."""
    from agents.writer.assemble import comparison_figures
    paired = request()
    assert {c.test for c in paired.report.comparisons} == {"paired"}
    (fig, _), (_, _) = comparison_figures(paired.report, "p")
    assert fig.caption.endswith("annotated with its paired t-test p-value.") and "Welch" not in fig.caption
    fresh = [run("job-b1", "baseline", [0.712, 0.705, 0.731], [1.212, 1.25, 1.19]),
             run("job-w1", "wd-1", [0.934, 0.951, 0.947], [0.412, 0.405, 0.43], overrides={"weight_decay": 1.0}, seeds=[7, 8, 9])]
    ((fig, _),) = comparison_figures(request(runs=fresh).report, "p")
    assert fig.caption.endswith("annotated with its Welch p-value.")
    mixed = fresh + [run("job-w0", "wd-0", [0.70, 0.74, 0.69], [1.3, 1.21, 1.26], overrides={"weight_decay": 0.0})]
    figs = comparison_figures(request(runs=mixed).report, "p")
    assert "paired t-test where both arms ran the same seeds, Welch otherwise" in figs[0][0].caption


async def test_provenance_appendix_lists_each_run_with_its_job_image_and_code_hash():
    """One table: experiment, job, what it ran in, the code hash's first twelve hex digits, and "fresh" or where the cache reused it from."""
    from bus.provenance import packages_sha256
    code = {"job-b1": "0123456789ab" + "c" * 52, "job-w1": "fedcba987654" + "3" * 52, "job-w0": "9" * 64}
    local = ENV.model_copy(update={"interpreter": "/usr/bin/python3 3.11.9", "packages_sha256": packages_sha256(ENV.packages)})
    pod = ENV.model_copy(update={"executor": "kubernetes", "image": "ghcr.io/lab/runner@sha256:" + "e" * 64, "node": "gpu-3"})
    runs = [r.model_copy(update={"environment": (pod if r.job_id == "job-w1" else local).model_copy(update={"code_sha256": code[r.job_id]}),
                                 "attempt": 2 if r.job_id == "job-w0" else 1,
                                 "reused_from": "alpha/x01-wd/j77" if r.job_id == "job-w1" else ""})
            if r.job_id in code else r for r in RUNS]
    req = request(runs=runs)
    out, store = await write(req)
    md, tex = store.data[out.markdown].decode(), store.data[out.tex].decode()
    appendix = md.split(": Provenance\n", 1)[1]
    rows = [ln for ln in appendix.splitlines() if ln.startswith("| exp-")]
    assert rows == [
        f"| exp-job-b1 | `job-b1` | interpreter Python 3.11.9, packages sha256 {packages_sha256(ENV.packages)[:12]} | `0123456789ab` | fresh |",
        f"| exp-job-w1 | `job-w1` | ghcr.io/lab/runner@sha256:{'e' * 64} | `fedcba987654` | reused from alpha/x01-wd |",
        "| exp-job-w0 | `job-w0 (attempt 2)` | interpreter Python 3.11.9, packages sha256 "
        f"{packages_sha256(ENV.packages)[:12]} | `999999999999` | fresh |",
        "| exp-x9 | `job-x9` | not recorded | `not recorded` | fresh |",  # a run with no recorded environment says so
    ]
    assert "## Appendix D: Provenance" in md and "names the project and experiment whose run it reused" in md
    assert "reused from alpha/x01-wd" in tex
    assert "/usr/bin/python3" not in appendix and "/usr/bin/python3" not in tex  # the paper names no path of the lab's machine
    assert "\\section{Provenance}" in tex and "\\texttt{0123456789ab} & fresh" in tex and "job-w0 (attempt 2)" in tex
    assert "ghcr.io/\\allowbreak{}lab/\\allowbreak{}runner@" in tex  # a long image reference may wrap in its cell
    # The hashes are identifiers, never numbers the paper states: none of their digits counts as one.
    assert not {123456789.0, 999999999999.0} & set(out.numbers)
    assert out.inconsistencies == []
    # The environment lines still group the runs by machine: where each ran and what code is the appendix's.
    assert md.count("- Runs ") == 2  # the local and the Kubernetes run differ by executor only

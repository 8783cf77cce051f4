"""A scripted "model" for whole-lab runs with ``--mind llm``: valid answers per role and step, plus chosen faults.

Why a function and not a list: six agents call the fake server concurrently,
so call order is not stable across runs. The step is read from the request
itself (the answer schema's name travels in ``response_format``; the prompt
carries the context: ids, keys, rounds), and each fault fires at the n-th
call of one step, which is stable. Everything served is recorded, so a test
can tell exactly which replies a role was billed for.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from tests.fake_openai import Reply, Request

# A line of experiment.py that occurs exactly once: the anchor of the scripted code edits.
ANCHOR = "import numpy as np\n"
BROKEN_MARK = "lab-e2e: this edit breaks the experiment at import"
PAPER_MARK = "scripted-llm-abstract"
# What the guard in agents/codeedit.py says about an edit that adds signal.alarm.
ALARM_REASON = "signal.alarm (extends or replaces the time limit)"

PROMPT_TOKENS, COMPLETION_TOKENS = 13, 5
HANG_S = 30.0


def schema_of(req: Request) -> str:
    fmt = req.body.get("response_format") or {}
    return str((fmt.get("json_schema") or {}).get("name", ""))


def first_user(req: Request) -> str:
    users = [m for m in req.messages if m.get("role") == "user"]
    return str(users[0].get("content", "")) if users else ""


def line_after(text: str, prefix: str) -> str:
    for line in text.splitlines():
        if line.startswith(prefix):
            return line[len(prefix):]
    return ""


def keys_in(text: str, field: str = "key") -> list[str]:
    return list(dict.fromkeys(re.findall(rf'"{field}": "([^"]+)"', text)))


class LabScript:
    """Answers every step of a grokking project; ``faults`` maps (schema, 0-based call) to a fault name."""

    FAULTS = {
        ("IdeaBatch", 0): "invalid_json",
        ("QueryList", 0): "rate_limit",
        ("SummaryAnswer", 0): "schema_mismatch",
        ("ReviewDraft", 0): "hang",
        ("PlanAnswer", 0): "alarm_edit",
        ("PlanAnswer", 1): "broken_edit",
    }

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.fired: list[tuple[str, int, str]] = []  # (schema, call, fault), in order
        self.billed: Counter[str] = Counter()  # role -> replies that carried usage to the client
        self.unknown: list[str] = []  # schemas this script could not answer (a test failure)
        self.times: dict[str, list[float]] = {}  # schema -> monotonic arrival time of each call
        self._answers: dict[str, Callable[[Request], Any]] = {
            "IdeaBatch": self.ideas,
            "NoteAnswer": lambda req: {"understood": "Noted; later ideas follow the note.", "allowed_knobs": [], "forbidden_knobs": []},
            "ItemAnswers": self.item_answers,
            "QueryList": self.queries,
            "NoveltyAnswer": self.novelty,
            "PlanAnswer": self.plan,
            "SummaryAnswer": self.summary,
            "PaperDraft": self.paper,
            "SectionText": lambda req: {"text": "A scripted section draft; the refinement pass gives the final text."},
            "ReviewDraft": self.review,
            "ReviewReflection": lambda req: {**self.review(req), "thoughts": "The review holds against the analysis.", "done": True},
            "MetaDraft": self.meta,
        }

    def __call__(self, req: Request) -> Reply:
        schema = schema_of(req)
        n = self.calls[schema]
        self.calls[schema] += 1
        self.times.setdefault(schema, []).append(time.monotonic())
        fault = self.FAULTS.get((schema, n))
        if fault:
            self.fired.append((schema, n, fault))
        if fault == "rate_limit":
            return Reply.error(429, "scripted rate limit")
        if fault == "hang":
            return Reply.hang(HANG_S)
        if schema not in self._answers:
            self.unknown.append(schema)
            return Reply.error(400, f"script has no answer for {schema!r}")
        self.billed[req.role] += 1
        if fault == "invalid_json":
            return self._reply('{"thoughts": "cut off mid-answer", "ideas": [')
        if fault == "schema_mismatch":
            return self._reply(json.dumps({"text": "a summary under the wrong field name"}))
        answer = self._answers[schema](req)
        if fault == "alarm_edit":
            answer["edits"] = [{"path": "experiment.py", "search": ANCHOR, "replace": ANCHOR + "import signal\nsignal.alarm(100000)\n"}]
        elif fault == "broken_edit":
            answer["edits"] = [{"path": "experiment.py", "search": ANCHOR, "replace": ANCHOR + f"raise RuntimeError({BROKEN_MARK!r})\n"}]
        return self._reply(json.dumps(answer))

    def _reply(self, content: str) -> Reply:
        return Reply.text(content, prompt_tokens=PROMPT_TOKENS, completion_tokens=COMPLETION_TOKENS)

    # ------------------------------------------------------------ one answer per step

    def ideas(self, req: Request) -> dict[str, Any]:
        prompt = first_user(req)
        tried = (line_after(prompt, "Ideas already tried in this project, with outcomes: ")
                 + line_after(prompt, "Earlier projects on this template (the idea archive), with outcomes: "))
        value = next(v for v in (0.3, 3.0, 0.1) if f'"weight_decay": {v}' not in tried)
        idea = {
            "title": f"Weight decay {value} and the timing of grokking",
            "hypothesis": "Changing AdamW weight decay from its baseline changes the held-out accuracy reached in the fixed budget.",
            "falsification": "Held-out accuracy is within the baseline's confidence interval over seeds.",
            "changes": [{"knob": "weight_decay", "value": value}],
            "rationale": "Weight decay is the lever most often credited with grokking.",
            "interestingness": 6,
            "feasibility": 9,
            "novelty": 4,
        }
        return {"thoughts": "Vary the one knob the literature ties to grokking.", "ideas": [idea], "done": True}

    def item_answers(self, req: Request) -> dict[str, Any]:
        items = line_after(first_user(req), "The reviewers ask for these revisions: ")
        return {"responses": [{"item_id": i, "action": "act", "text": "We state this limitation in the paper."} for i in keys_in(items, "id")]}

    def queries(self, req: Request) -> dict[str, Any]:
        first_round = "Search round 0." in first_user(req)
        return {"queries": ["grokking weight decay", "modular arithmetic transformer generalization"] if first_round else []}

    def summary(self, req: Request) -> dict[str, Any]:
        """As a model reading the report would: withheld conclusions said first when the report withholds them."""
        if '"conclusions_withheld": true' in first_user(req):
            return {"summary": "Conclusions are withheld: the positive control did not separate from the baseline, so no comparison "
                               "is judged; the comparisons are reported as measured, with every flag."}
        return {"summary": "The analysis compares the idea with the baseline over seeds; read the comparisons and every flag."}

    def novelty(self, req: Request) -> dict[str, Any]:
        found = keys_in(line_after(first_user(req), "Papers found: "))
        return {"novel": True, "justification": "No paper found tests this exact weight decay in this setting.", "cited_keys": found[:2]}

    def plan(self, req: Request) -> dict[str, Any]:
        idea = json.loads(line_after(first_user(req), "Idea to implement: "))
        overrides = [{"knob": k, "value": v} for k, v in idea["changes"].items()]
        return {"explanation": "The idea is a knob change; the runner passes it as a flag.", "overrides": overrides, "edits": []}

    def paper(self, req: Request) -> dict[str, Any]:
        refs = keys_in(line_after(first_user(req), "References (cite with \\cite{key}, only these): "))
        cite = f" \\cite{{{refs[0]}}}" if refs else ""
        return {
            "title": "Weight decay and the timing of grokking",
            "abstract": f"We study how AdamW weight decay changes grokking on modular addition ({PAPER_MARK}).",
            "introduction": "Grokking is delayed generalisation after memorisation" + cite + ".",
            "related_work": "Prior work links weight decay to grokking" + cite + ".",
            "method": "We change one knob of the template and compare with the baseline over seeds.",
            "experimental_setup": "A one-layer transformer is trained full-batch with AdamW on the fast profile.",
            "results": "The comparison with the baseline is reported in the analysis table with its interval.",
            "limitations": "Only one modulus and a short training budget were tested.",
            "conclusion": "Weight decay is worth varying more widely.",
            "revision_notes": "",
        }

    def review(self, req: Request) -> dict[str, Any]:
        scores = {k: 3 for k in ("originality", "quality", "clarity", "significance", "soundness", "presentation", "contribution")}
        return {
            "summary": "The paper varies weight decay in a small grokking setup.",
            "strengths": ["Clear single-knob comparison."],
            "weaknesses": ["One modulus only."],
            "questions": ["Does the effect hold for other primes?"],
            "limitations": "Stated.",
            "ethics": "No concerns.",
            "scores": {**scores, "overall": 6, "confidence": 3},
            "decision": "accept",
        }

    def meta(self, req: Request) -> dict[str, Any]:
        prompt = first_user(req)
        overall = [int(s) for s in re.findall(r'"overall": (\d+)', line_after(prompt, "You are the area chair. Reviews: "))]
        m = re.search(r"Revision round (\d+) of at most (\d+)\.", prompt)
        can_revise = bool(m) and int(m.group(1)) < int(m.group(2))
        items = [{"id": "r1", "kind": "add_limitation", "text": "State that only one modulus was tested.", "target": "limitations"}]
        return {
            "summary": "Reviewers agree the study is sound but narrow.",
            "overall": float(min(overall, default=6)),
            "decision": "revise" if can_revise else "accept",
            "revision_items": items if can_revise else [],
        }

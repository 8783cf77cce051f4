"""Reading the bus for a page: one project's conversation and job output, its artifacts, its paper as HTML."""

from __future__ import annotations

from markdown_it import MarkdownIt

from bus import subjects
from bus.client import Bus
from bus.permissions import convo_refusal
from bus.replay import Entry, read
from bus.store import Artifacts
from services.read.projects import project_state
from services.web import views


async def conversation(bus: Bus, project: str) -> list[Entry]:
    return [e async for e in read(bus, subjects.convo_all(project))]


async def job_output(bus: Bus, project: str) -> dict[str, views.JobLive]:
    return views.job_activity([e async for e in read(bus, subjects.jobs_all(project), stream=subjects.JOBS_STREAM)])


async def project_page(bus: Bus, project: str) -> views.ProjectPage:
    # What its subject does not vouch for (a decision or a review the co-PI forged, bus.permissions.SENDERS) is not the project's.
    convo = [e.envelope for e in await conversation(bus, project) if e.envelope is not None and convo_refusal(e.subject, e.envelope) is None]
    return views.project_page(project, await project_state(bus, project), convo, await job_output(bus, project))


async def artifact(bus: Bus, name: str) -> bytes:
    return await (await Artifacts.open(bus)).get(name)


def render_markdown(text: str, link_base: str) -> str:
    """The paper's Markdown as HTML; relative links (``figures/figure-a.png``) point at ``link_base``.

    Raw HTML in the Markdown is not passed through: a paper is text a mind
    wrote, and the page must not run what it says.
    """
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(text)
    for tok in tokens:
        for child in tok.children or []:
            for attr in ("src", "href"):
                value = child.attrGet(attr)
                if isinstance(value, str) and value and "://" not in value and not value.startswith(("/", "#", "mailto:")):
                    child.attrSet(attr, f"{link_base.rstrip('/')}/{value}")
    html: str = md.renderer.render(tokens, md.options, {})
    return html

"""The lab's contracts: every shape that crosses a layer, and the constants they share.

``bus`` is the bottom layer, so what the CLI, the host, the agents and the job
runner must agree on lives here and is imported from here (``from bus.schema
import ...``), never copied. By concern:

- ``base``: the base model, role and party names;
- ``constants``: baseline name, minimum seeds, liveness timings, stream and bucket names, runner exit codes;
- ``project``: budget, ideas, references, co-PI notes, usage, the mind a project asked for;
- ``template``: the template spec (template.yaml);
- ``job``: the job spec a runner runs, what an executor sees of a job;
- ``results``: what a job produced;
- ``analysis``: the analyst's report and its typed flags;
- ``archive``: ideas' outcomes and the idea archive's records across projects;
- ``review``: reviews, revision items, answers;
- ``steps``: the steps a role can fail at;
- ``messages``: the message bodies, their union, the envelope;
- ``state``: read models of the agents' state, for the CLI and the web view;
- ``kinds``: the closed choices (mind, executor, llm output mode) and the profile name;
- ``formats``: what crosses a process boundary besides the envelope: lab.json, config.yaml, the
  role document in the state bucket, the runner's log line and its result.json.
"""

from bus.schema.analysis import AnalysisFlag, AnalysisReport, Comparison
from bus.schema.archive import ArchiveRecord, IdeaOutcome, OutcomeStatus, archive_key, idea_signature, signature_of
from bus.schema.base import ROLES, Direction, Model, Recipient, RoleName, Sender
from bus.schema.constants import BASELINE, MIN_SEEDS, SCHEMA_VERSION
from bus.schema.formats import FormatError, JobLogLine, LabConfig, LabFile, RoleDocument, dump_result, read_result
from bus.schema.job import JobPhase, JobSpec, JobState, NatsAccess
from bus.schema.kinds import (
    DEFAULT_PROFILE,
    EXECUTOR_KINDS,
    FAST_PROFILE,
    MIND_KINDS,
    OUTPUT_MODES,
    ExecutorKind,
    MindKind,
    OutputMode,
    ProfileName,
)
from bus.schema.messages import (
    MESSAGE_KINDS,
    AnalysisDone,
    AnalysisRequest,
    Body,
    CoPINoteMsg,
    Decision,
    DraftReady,
    DraftRequest,
    Envelope,
    ExperimentPlanned,
    ExperimentRequest,
    ExperimentResult,
    JobStatus,
    NoteAck,
    NoveltyCheck,
    NoveltyVerdict,
    ProjectApproval,
    ProjectEstimate,
    Rebuttal,
    ReferenceSearch,
    ReferencesFound,
    ReviewDone,
    ReviewRequest,
    StartProject,
    StepFailed,
    UsageReport,
    decode,
    derive_id,
    encode,
)
from bus.schema.project import ApprovalPolicy, Budget, BudgetLimits, CodeChange, CodeEdit, CoPINote, Estimate, Idea, MindChoice, Reference, Usage
from bus.schema.results import FinalInfo, JobEnvironment, MetricStat, RunRecord
from bus.schema.review import ItemResponse, MetaReview, Review, ReviewEvidence, ReviewScores, RevisionItem
from bus.schema.state import EngineerView, Heartbeat, JobView, ProjectView, Stage
from bus.schema.steps import Step
from bus.schema.template import (
    Knob,
    Metric,
    Profile,
    Resolved,
    Resources,
    TemplateError,
    TemplateSpec,
    Variant,
    parse_spec,
)

__all__ = [
    "ArchiveRecord", "IdeaOutcome", "OutcomeStatus", "archive_key", "idea_signature", "signature_of",
    "AnalysisDone", "AnalysisFlag", "AnalysisReport", "AnalysisRequest", "BASELINE", "Body", "Budget", "CoPINote",
    "CoPINoteMsg", "CodeChange", "CodeEdit", "Comparison", "DEFAULT_PROFILE", "Decision", "Direction", "DraftReady", "DraftRequest",
    "EngineerView", "Envelope", "ExperimentPlanned", "ExperimentRequest", "ExperimentResult", "FinalInfo",
    "Heartbeat", "Idea", "ItemResponse", "JobEnvironment", "JobPhase", "JobSpec", "JobState", "JobStatus", "JobView",
    "Knob", "MESSAGE_KINDS", "MIND_KINDS", "MindKind", "MIN_SEEDS", "MetaReview", "Metric", "MetricStat", "MindChoice", "Model", "NatsAccess",
    "NoteAck", "NoveltyCheck", "NoveltyVerdict", "Profile", "ProjectView", "ROLES", "Rebuttal", "Recipient",
    "Reference", "ReferenceSearch", "ReferencesFound", "Resolved", "Resources", "Review", "ReviewDone",
    "ReviewRequest", "ReviewEvidence", "ReviewScores", "RevisionItem", "RoleName", "RunRecord", "SCHEMA_VERSION", "Sender", "Stage",
    "StartProject", "Step", "StepFailed", "TemplateError", "TemplateSpec", "Usage", "UsageReport", "Variant", "decode",
    "derive_id", "encode", "parse_spec",
    "EXECUTOR_KINDS", "ExecutorKind", "FAST_PROFILE", "OUTPUT_MODES", "OutputMode", "ProfileName",
    "ApprovalPolicy", "BudgetLimits", "Estimate", "ProjectApproval", "ProjectEstimate",
    "FormatError", "JobLogLine", "LabConfig", "LabFile", "RoleDocument", "dump_result", "read_result",
]

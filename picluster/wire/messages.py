"""
Every message of the picluster protocol, declared once.

Each L{Message} names a type, the shape of its payload (a msgspec type:
fields, types, units and limits), who sends it and what answers it, in the
spirit of AMP's C{Command}.  The protocol decodes every payload it receives
with its declaration, so a handler is handed a checked, typed value; a
payload of the wrong shape is refused with a C{bad_message} naming the field.
The senders build their payloads from the same classes, and the protocol
reference in the docs is generated from this module.

A field's C{Meta(description=...)} is its documentation; C{extra_json_schema}
is not used.  Limits are C{Meta} constraints, so they are checked by the
decoder in C before any handler runs.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import Meta, Struct

#: The version of the hello handshake this code speaks: 2 on TLS, with a
#: proof of the token's secret; 1 in plain mode (C{--insecure}).
PROTOCOL_VERSION = 2
PLAIN_VERSION = 1

#: Versions of the hello handshake a master accepts, in either mode.
SUPPORTED_VERSIONS = (PLAIN_VERSION, PROTOCOL_VERSION)

#: The built-in tasks that run commands on a slave: a master in plain mode
#: (C{--insecure}), which anyone may reach, refuses to queue them.
COMMAND_TASKS = ("shell", "reboot", "shutdown", "update")

#: What a hello's credential may name (see L{picluster.trust.token}).
CREDENTIALS = ("slave", "client", "read-only")

#: Characters of a hello's proof: a hex HMAC-SHA256.
PROOF_LENGTH = 64

#: What a connection may say it is in its hello.
ROLES = ("slave", "client")

#: Most slots a slave may claim, and most task names it may offer.
MAX_SLOTS = 1024
#: Most runs a slave may hold ready beyond its slots (L{WorkerOffer.prefetch}).
MAX_PREFETCH = 1024
MAX_OFFERS = 10_000

#: Longest idempotency key and task name, in characters.
MAX_KEY_LENGTH = 200
MAX_NAME_LENGTH = 200

#: Runs a task gets after its first, when slaves are lost under it, unless
#: its spec says otherwise; and the most anyone may ask for.
DEFAULT_RETRIES = 3
MAX_RETRIES = 100

#: The longest timeout a task may have: a year, in seconds.
MAX_TIMEOUT = 365 * 86400.0

#: Specs in one C{submit} message.
MAX_SPECS_PER_SUBMIT = 10_000

#: Tasks a C{tasks} request lists unless told otherwise, and at most.
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000

#: Tasks one connection may watch at once, and name in one watch: the
#: answer lists each still open one (some 35 bytes), and must fit a frame.
MAX_WATCHED = 10_000

#: The largest payload of a slave's machine facts or vitals, in bytes of
#: JSON: a real one is some 600.  Unknown fields (a newer slave's) count.
MAX_FACTS_BYTES = 4096

#: The largest payload of a free-text C{message}, in bytes of JSON.
MAX_MESSAGE_BYTES = 4096

#: The largest payload of a hello, a ping or a pong.
MAX_SMALL_BYTES = 1024

#: Task states, in the order a task goes through them.
TASK_STATES = ("queued", "running", "done", "failed", "cancelled")

#: The refusals of a C{run_task} that cost the task no attempt: the slave is
#: busy, not unable.  A slave must send them as the C{error} text, exactly.
NO_FREE_SLOT = "no free slot"
TASK_ALREADY_RUNNING = "task already running"
BUSY_REFUSALS = (NO_FREE_SLOT, TASK_ALREADY_RUNNING)

# -- refusals ------------------------------------------------------------------
#
# The C{error} texts of C{bad_message} payloads.  A peer may match the fixed
# ones; those in braces carry the particulars.

NOT_UTF8 = "frame is not valid UTF-8"
NOT_JSON = "frame is not valid JSON"
NOT_OBJECT = "frame is not a JSON object"
BAD_ID = '"id" must be an integer'
BAD_REPLY_TO = '"reply_to" must be an integer'
NO_TYPE = 'envelope has no string "type"'
UNKNOWN_TYPE = "unknown message type"
UNSUPPORTED_VERSION = "unsupported protocol version"
BAD_UUID = "uuid must be null or 32 hex digits"
UNKNOWN_ROLE = "unknown role"
UNKNOWN_INFO = "unknown info request"
SAY_HELLO_FIRST = "say hello first"
AUTHENTICATION_FAILED = "authentication failed"
NODE_OWNED = "this uuid belongs to another node"
IDENTITY_IN_USE = "this node's identity is in use by another machine (a cloned SD card?)"

#: Every refusal text, and when it is sent: the fixed ones above, then those
#: with particulars in braces.
REFUSAL_TEXTS: tuple[tuple[str, str], ...] = (
    (NOT_UTF8, "the frame's bytes are not UTF-8 (details: position)"),
    (NOT_JSON, "not JSON, or a number no float holds such as 1e400, or nested too deeply"
               " (details: detail, and field when inside a payload)"),
    (NOT_OBJECT, "the frame holds a JSON value that is not an object (details: got)"),
    (BAD_ID, "the id is not an integer (details: got)"),
    (BAD_REPLY_TO, "the reply_to is not an integer (details: got)"),
    (NO_TYPE, "the envelope has no string type"),
    (UNKNOWN_TYPE, "the receiver does not handle this type (details: type)"),
    ("bad {type} payload: {problem}", "the payload as a whole has the wrong type"),
    ("bad {type} payload at {field}: {problem}",
     "the payload does not have its declared shape (details: field; known, for an unknown"
     " field; index, for a bad task spec; and a hello's refusal details)"),
    (UNSUPPORTED_VERSION, "a hello of another version; the connection is closed"
                          " (details: version, supported)"),
    (BAD_UUID, "a hello's uuid is malformed; the connection is closed (details: supported)"),
    (UNKNOWN_ROLE, "a hello's role is neither slave nor client; the connection is closed"
                   " (details: role, known)"),
    (UNKNOWN_INFO, "info asks something else (details: request, known)"),
    (AUTHENTICATION_FAILED, "a secure master's hello without a valid proof of a token's secret,"
                            " or with a role its credential does not allow; the connection"
                            " is closed"),
    (NODE_OWNED, "a secure master's slave hello takes a uuid back without the proof of its"
                 " node key; the connection is closed"),
    (IDENTITY_IN_USE, "a secure master's slave hello takes back a uuid that two machines hold"
                      " (they displaced each other again and again); the connection is closed"),
    (SAY_HELLO_FIRST, "a task message before the hello; on a secure master, any message but"
                      " hello before it, and the connection is closed"),
    ("not served to a {role}", "a task message the connection's role may not send"),
    ("task {index}: {problem}", "a spec of a submit is refused (details: index); nothing is stored"),
    ("unknown state {state}", "tasks asks for a state that does not exist (details: known)"),
    ("no task {id}", "cancel names a task the master does not have"),
    ("task {id} is already {state}", "cancel names a task that has ended (details: state)"),
    (f"at most {MAX_WATCHED} watched tasks per connection", "watch asks for too many"),
    ("worker already sent on this connection", "a second worker on one connection"),
    ("a failed task_result needs an error with a message", "a failed result without its error"),
    ("the result is not UTF-8 text: {problem}", "a task_result whose result has strings that"
                                                " are not UTF-8 (JSON's grammar alone lets them by)"),
    (NO_FREE_SLOT, "a slave refuses a run_task: all its slots are busy and it holds as many ready"
                   " as it may, or their arguments would pass its bound (details: slots,"
                   " prefetch, ready_bytes, max_ready_bytes)"),
    (TASK_ALREADY_RUNNING, "a slave refuses a run_task of a task it runs (details: id, attempt)"),
    ("this slave runs no tasks on this connection", "a run_task before the worker was accepted"),
)

#: What a task's error C{kind} may say.
ERROR_KINDS = ("error", "bad_arguments", "not_permitted", "unknown_task", "timeout",
               "crashed", "lost")

#: What C{info} may ask.
INFO_QUESTIONS = ("computer_details", "uuid", "slave_details", "status", "slaves", "summary")

#: The largest payload of an info question: a paged one carries a cursor
#: and a search text.
MAX_QUESTION_BYTES = 4096


TaskId = Annotated[int, Meta(description="a task's id, given by the master", ge=1)]
Attempt = Annotated[int, Meta(description="which run of the task: 1 for the first", ge=1)]
EpochSeconds = Annotated[float, Meta(description="seconds since the Unix epoch")]
#: The largest count of bytes a field holds: a 64-bit signed integer.
MAX_BYTES = 2**63 - 1
NonEmpty = Annotated[str, Meta(min_length=1)]
NonNegative = Annotated[int, Meta(ge=0, le=MAX_BYTES)]


class Payload(Struct, forbid_unknown_fields=False):
    """
    An object payload: unknown fields are ignored, so peers can grow; every
    field is sent, null or not, so a peer reads the whole shape.
    """


class StrictPayload(Payload, forbid_unknown_fields=True):
    """An object payload in which a field this side does not know is refused."""


# -- the handshake -----------------------------------------------------------


class Hello(Payload):
    """The first message of every connection."""

    version: Annotated[Any, Meta(description=(
        f"the handshake version the peer speaks; a master supports {list(SUPPORTED_VERSIONS)}"
    ))] = None
    uuid: Annotated[str | None, Meta(description=(
        "the uuid this node had before (32 hexadecimal digits), to take it back; null for a new one"
    ))] = None
    role: Annotated[str, Meta(description=f"what the connection is: one of {', '.join(ROLES)}")] = "slave"
    credential: Annotated[Annotated[str, Meta(max_length=16)] | None, Meta(
        description=f"version 2: the credential of the token held, one of {', '.join(CREDENTIALS)}",
    )] = None
    proof: Annotated[Annotated[str, Meta(max_length=PROOF_LENGTH)] | None, Meta(
        description=("version 2: hex HMAC-SHA256 keyed with the token's secret over the proof"
                     " context, the credential and the TLS exporter; see the security page"),
    )] = None
    node_proof: Annotated[Annotated[str, Meta(max_length=PROOF_LENGTH)] | None, Meta(
        description=("version 2, a slave taking its uuid back: hex HMAC-SHA256 keyed with its"
                     " node key over the node proof context, the uuid and the TLS exporter"),
    )] = None


#: The shortest interval between pings a node keeps whatever a welcome's
#: keepalive says, in seconds: a broken or hostile master asking for 1e-300
#: would have it ping in a busy loop.  Only what a master asks is raised to
#: it: a node's own C{--keepalive} is its owner's choice.
SHORTEST_KEEPALIVE = 1.0


class Welcome(Payload, omit_defaults=True):
    """
    The master's answer to a hello.  C{node_key} is sent only when there is
    one, so a plain master's welcome is what it always was.
    """

    uuid: Annotated[str, Meta(description="this connection's uuid: the node's identity")]
    keepalive: Annotated[float, Meta(
        description="seconds between the master's pings; ping at least as often (a node pings no faster"
                    f" than every {SHORTEST_KEEPALIVE:g} s)",
        gt=0,
    )]
    dead_after: Annotated[float, Meta(
        description="seconds of silence after which the master drops a peer",
        gt=0,
    )]
    node_key: Annotated[str | None, Meta(
        description="a secure master's new node key for this slave's uuid: keep it with the uuid",
    )] = None
    max_frame: Annotated[Annotated[int, Meta(ge=1)] | None, Meta(
        description="the largest frame the master takes, in bytes: a slave fails a result that would not "
                    "fit rather than send it",
    )] = None


# -- machine facts and vitals ------------------------------------------------


class Throttling(Payload):
    """The Pi firmware's throttling flags (C{vcgencmd get_throttled}), decoded."""

    raw: Annotated[int | None, Meta(description="the flags as the firmware gives them")] = None
    under_voltage: bool | None = None
    frequency_capped: bool | None = None
    throttled: bool | None = None
    soft_temperature_limit: bool | None = None
    under_voltage_occurred: Annotated[bool | None, Meta(description="since boot")] = None
    frequency_capped_occurred: Annotated[bool | None, Meta(description="since boot")] = None
    throttled_occurred: Annotated[bool | None, Meta(description="since boot")] = None
    soft_temperature_limit_occurred: Annotated[bool | None, Meta(description="since boot")] = None


class ComputerDetails(Payload):
    """A machine's facts, sent once a connection: what it is."""

    hostname: str | None = None
    model: Annotated[str | None, Meta(
        description="the board, from the device tree, e.g. Raspberry Pi 4 Model B Rev 1.4",
    )] = None
    cpu: Annotated[str | None, Meta(description="the processor's name")] = None
    cpu_cores: Annotated[NonNegative | None, Meta(description="logical cores")] = None
    cpu_frequency_max: Annotated[float | None, Meta(description="MHz")] = None
    cpu_frequency_min: Annotated[float | None, Meta(description="MHz")] = None
    ram: Annotated[NonNegative | None, Meta(description="bytes of memory")] = None
    swap: Annotated[NonNegative | None, Meta(description="bytes of swap")] = None
    architecture: str | None = None
    os: Annotated[str | None, Meta(description="the operating system's pretty name")] = None
    python: Annotated[str | None, Meta(description="the Python version running picluster")] = None
    picluster_version: str | None = None
    boot_time: Annotated[float | None, Meta(description="seconds since the Unix epoch")] = None


class Vitals(Payload):
    """
    A slave's current readings, sent every C{--vitals} seconds.  A reading
    that failed is null; it never costs the rest of the report.
    """

    cpu_percentage: Annotated[float | None, Meta(
        description="percent of all cores busy since the last report",
    )] = None
    cpu_frequency: Annotated[float | None, Meta(description="MHz")] = None
    ram_free: Annotated[NonNegative | None, Meta(description="bytes available")] = None
    swap_free: Annotated[NonNegative | None, Meta(description="bytes")] = None
    cpu_temperature: Annotated[float | None, Meta(
        description="degrees Celsius, from the thermal zone",
    )] = None
    throttling: Annotated[Throttling | None, Meta(description="where the Pi firmware exposes it")] = None
    under_voltage: Annotated[bool | None, Meta(
        description="also read from the rpi_volt hwmon where that is all there is",
    )] = None
    load_average: Annotated[list[float] | None, Meta(
        description="the 1, 5 and 15 minute load averages (the API shows exactly three)",
    )] = None
    disk_free: Annotated[NonNegative | None, Meta(description="bytes free on the root file system")] = None
    disk_total: Annotated[NonNegative | None, Meta(description="bytes")] = None
    uptime: Annotated[float | None, Meta(description="seconds since boot")] = None
    process_rss: Annotated[NonNegative | None, Meta(
        description="bytes of memory the slave's own process holds",
    )] = None


# -- tasks -------------------------------------------------------------------


class TaskRequirements(StrictPayload):
    """What a slave must have to be given a task."""

    min_ram: Annotated[int, Meta(description="bytes of memory (the slave's computer_details ram)", ge=0)] = 0
    min_cores: Annotated[int, Meta(description="cores (the slave's computer_details cpu_cores)", ge=0)] = 0
    tags: Annotated[list[NonEmpty], Meta(description="all of these among the slave's --tags")] = []
    hostname: Annotated[NonEmpty | None, Meta(description="this slave only")] = None


class TaskSpec(StrictPayload):
    """One task as a client submits it."""

    name: Annotated[str, Meta(description="the task to run", min_length=1, max_length=MAX_NAME_LENGTH)]
    args: Annotated[dict[str, Any] | None, Meta(
        description="the task's keyword arguments; at most --max-args bytes as JSON",
    )] = None
    requirements: TaskRequirements | None = None
    timeout: Annotated[Annotated[float, Meta(gt=0, le=MAX_TIMEOUT)] | None, Meta(
        description="seconds a run may take before it is stopped",
    )] = None
    retries: Annotated[int, Meta(
        description="more runs if its slave is lost under it",
        ge=0, le=MAX_RETRIES,
    )] = DEFAULT_RETRIES
    key: Annotated[Annotated[str, Meta(min_length=1, max_length=MAX_KEY_LENGTH)] | None, Meta(
        description="an idempotency key: the same key is the same task",
    )] = None


class Submit(Payload):
    tasks: Annotated[list[TaskSpec], Meta(
        description="all stored, or none",
        min_length=1, max_length=MAX_SPECS_PER_SUBMIT,
    )]


class Submitted(Payload):
    tasks: Annotated[list[dict[str, Any]], Meta(
        description='per spec, in order: {"id", "key", "state", "duplicate"}',
    )]
    warnings: Annotated[list[str], Meta(
        description="things the user should know, e.g. no slave offers the task",
    )] = []


class TaskError(Payload):
    """Why a task failed."""

    message: str
    type: Annotated[str, Meta(description="the exception's class name, or a word such as Timeout")] = "Error"
    traceback: str | None = None
    kind: Annotated[str, Meta(description=f"one of {', '.join(ERROR_KINDS)}")] = "error"


class TaskRecord(Payload):
    """A task as the master shows it."""

    id: TaskId
    name: str
    state: Annotated[str, Meta(description=f"one of {', '.join(TASK_STATES)}")]
    key: str | None = None
    args: dict[str, Any] | None = None
    requirements: dict[str, Any] | None = None
    timeout: float | None = None
    retries: int = DEFAULT_RETRIES
    slave: Annotated[str | None, Meta(
        description="the uuid of the slave running it, or that ran it last",
    )] = None
    slave_hostname: str | None = None
    attempts: Annotated[int, Meta(description="runs handed to slaves")] = 0
    unstarted: Annotated[int, Meta(
        description="of its attempts, those taken back before they started (held ready by a slave that was "
                    "lost or busy, or moved to an idle one): not counted against its retries",
    )] = 0
    submitted_at: EpochSeconds | None = None
    submitted_by: Annotated[str | None, Meta(
        description="the credential and address that submitted it: client at 10.0.0.5:40312",
    )] = None
    started_at: EpochSeconds | None = None
    finished_at: EpochSeconds | None = None
    result: Annotated[Any, Meta(description="what the task returned, when done")] = None
    error: TaskError | None = None
    waiting: Annotated[str | None, Meta(description="why a queued task waits")] = None


class TasksQuery(StrictPayload):
    ids: Annotated[Annotated[list[int], Meta(max_length=MAX_LIST_LIMIT)] | None, Meta(
        description="only these tasks",
    )] = None
    state: Annotated[str | None, Meta(
        description=f"only tasks in this state: one of {', '.join(TASK_STATES)}",
    )] = None
    limit: Annotated[int, Meta(description="at most this many", ge=1, le=MAX_LIST_LIMIT)] = DEFAULT_LIST_LIMIT
    after: Annotated[int | None, Meta(
        description="only tasks past this id in the list's order: the last id of the previous page",
    )] = None
    order: Annotated[Literal["oldest", "newest"], Meta(
        description="by id, the oldest first, or the newest first",
    )] = "oldest"


class TaskList(Payload):
    tasks: Annotated[list[dict[str, Any]], Meta(
        description="TaskRecord objects by id (for watch: only their id and state)",
    )]
    more: Annotated[bool | None, Meta(
        description="true when the list was cut to fit a frame: ask again with after",
    )] = None


class TaskRef(StrictPayload):
    id: TaskId


class Watch(StrictPayload):
    ids: Annotated[list[int], Meta(description="tasks to watch", max_length=MAX_WATCHED)]


class TaskUpdate(Payload):
    task: Annotated[TaskRecord, Meta(description="the task, once it has ended")]


class Run(Payload):
    """One run of a task: which task, which attempt."""

    id: TaskId
    attempt: Attempt


class WorkerOffer(Payload):
    """What a slave offers to run."""

    slots: Annotated[int, Meta(description="runs at once", ge=1, le=MAX_SLOTS)]
    tasks: Annotated[list[NonEmpty], Meta(description="the task names it runs", max_length=MAX_OFFERS)]
    refused: Annotated[dict[str, str], Meta(
        description="tasks it offers but will not run as things stand, and why",
    )] = {}
    tags: Annotated[list[NonEmpty], Meta(description="its --tags", max_length=MAX_OFFERS)] = []
    holding: Annotated[list[Run], Meta(
        description="runs it still holds from an earlier connection: the running ones, then the ready ones "
                    "in the order they will start",
        max_length=MAX_SLOTS + MAX_PREFETCH,
    )] = []
    prefetch: Annotated[int, Meta(
        description="runs it holds ready beyond its slots, each started as a slot frees, in the order given",
        ge=0, le=MAX_PREFETCH,
    )] = 0


class WorkerAccepted(Payload):
    drop: Annotated[list[Run], Meta(description="held runs the master has given up on: stop them")] = []


class RunTask(Payload):
    id: TaskId
    attempt: Attempt
    name: str
    args: dict[str, Any] | None = None
    timeout: Annotated[Annotated[float, Meta(gt=0)] | None, Meta(description="seconds")] = None


class TaskResult(Payload):
    id: TaskId
    attempt: Attempt
    outcome: Literal["done", "failed"]
    # Kept as the JSON it came as (msgspec.Raw): the master only stores it
    # and passes it on, and decoded it could take a dozen times the room.
    result: Annotated[msgspec.Raw, Meta(description="what the task returned (done)")] = msgspec.Raw(b"null")
    error: Annotated[TaskError | None, Meta(description="why it failed (required when failed)")] = None
    retry: Annotated[bool, Meta(description="asks for another run; only for a crashed one")] = False


# -- the slaves, a page at a time -----------------------------------------------

#: The sizes of a list of slaves (see L{picluster.master.slavelist}, which
#: checks them too, for the web API).
DEFAULT_SLAVES_LIMIT = 100
MAX_SLAVES_LIMIT = 1000
MAX_SEARCH_LENGTH = 200
MAX_CURSOR_LENGTH = 600

#: The orders of a list of slaves, and what it may be narrowed to.
SlaveOrder = Literal["hostname", "newest"]
SlaveState = Literal["connected", "left", "trouble"]
SLAVE_ORDERS: tuple[str, ...] = typing.get_args(SlaveOrder)
SLAVE_STATES: tuple[str, ...] = typing.get_args(SlaveState)


class InfoQuery(StrictPayload):
    """
    An C{info} question with the page of slaves it wants (for
    C{slave_details}, C{slaves} and C{status}; the others ignore it).
    """

    question: Annotated[str, Meta(description=f"one of {', '.join(INFO_QUESTIONS)}")]
    limit: Annotated[int, Meta(
        description="slaves on the page, at most",
        ge=1, le=MAX_SLAVES_LIMIT,
    )] = DEFAULT_SLAVES_LIMIT
    after: Annotated[Annotated[str, Meta(max_length=MAX_CURSOR_LENGTH)] | None, Meta(
        description="the next cursor of the previous page",
    )] = None
    order: Annotated[SlaveOrder, Meta(
        description="connected slaves by hostname, or the newest first; then those that left, in the"
                    " same order",
    )] = "hostname"
    state: Annotated[SlaveState | None, Meta(
        description="only these: trouble is the nodes the summary names",
    )] = None
    search: Annotated[Annotated[str, Meta(max_length=MAX_SEARCH_LENGTH)] | None, Meta(
        description="only slaves whose hostname, address or uuid holds this, in any case",
    )] = None


class SlavePage(Payload):
    """One page of slaves."""

    slaves: Annotated[list[dict[str, Any]], Meta(description="the page's slaves, in the order asked for")]
    total: Annotated[int, Meta(description="slaves the query matches, on every page")]
    more: Annotated[bool, Meta(description="whether there are more: ask again with after set to next")]
    next: Annotated[str | None, Meta(description="an opaque cursor for the next page")] = None


# -- replies -----------------------------------------------------------------


class Refusal(Payload):
    """A C{bad_message}: what was wrong, and facts to act on."""

    error: str
    type: Annotated[Any, Meta(description="the unknown or refused message type")] = None
    field: Annotated[str | None, Meta(description="the payload field that was wrong, as a path")] = None
    got: Annotated[Any, Meta(description="the value that was refused")] = None
    index: Annotated[int | None, Meta(description="the position of the bad task spec in a submit")] = None
    supported: Annotated[list[int] | None, Meta(description="handshake versions the master speaks")] = None
    known: Annotated[list[str] | None, Meta(description="the values that would have been accepted")] = None
    version: Any = None
    role: Any = None
    request: Any = None
    state: Annotated[str | None, Meta(description="the state of the task a cancel named")] = None
    detail: str | None = None
    position: Annotated[int | None, Meta(description="where in the frame decoding failed")] = None


class ServiceFailure(Payload):
    """An C{error}: the receiver could not serve a well-formed request."""

    error: Annotated[str, Meta(description="what went wrong, for the user")]


# -- the declarations ----------------------------------------------------------


MASTER, SLAVE, CLIENT = "master", "slave", "client"
ANYONE = (MASTER, SLAVE, CLIENT)


@dataclass(frozen=True)
class Message:
    """
    One message type: its payload's shape, who sends it, what answers it.

    @ivar replies: For a request, the reply types it may get besides the
        generic C{bad_message} and C{error}, with their payloads' shapes.
    @ivar on_refusal: Facts added to a C{bad_message} refusing this type,
        and whether the connection is closed after it (C{"close": True}).
    """

    type: str
    payload: Any
    senders: tuple[str, ...]
    doc: str
    replies: dict[str, Any] = field(default_factory=dict)
    on_refusal: dict[str, Any] = field(default_factory=dict)
    #: Sent only as a reply, never as a request of its own.
    reply_only: bool = False
    #: A list field whose bad element a refusal names by its C{index}.
    indexed: str | None = None
    #: The largest payload accepted, in bytes of JSON, where the frame's
    #: limit is too generous for what the message is.
    max_bytes: int | None = None

    def refusal(self, path: str | None, problem: str) -> dict[str, Any]:
        """The facts a C{bad_message} refusing this type carries, for a bad C{path}."""
        facts = dict(self.on_refusal)
        if self.indexed is not None and path is not None:
            found = re.match(re.escape(self.indexed) + r"\[(\d+)\]", path)
            if found is not None:
                facts["index"] = int(found.group(1))
        if problem.startswith("Object contains unknown field"):
            known = fields_at(self.payload, path)
            if known:
                facts["known"] = known
        return facts


def fields_at(shape: Any, path: str | None) -> list[str] | None:
    """The field names of the object at C{path} (C{tasks[0].requirements}) in C{shape}."""
    for step in re.findall(r"[^.\[\]]+", path or ""):
        shape = _object_type(shape)
        if step.isdigit():
            arguments = typing.get_args(shape)
            shape = arguments[0] if arguments else None
        elif isinstance(shape, type) and issubclass(shape, Struct):
            shape = typing.get_type_hints(shape, include_extras=True).get(step)
        else:
            return None
    shape = _object_type(shape)
    if isinstance(shape, type) and issubclass(shape, Struct):
        return list(shape.__struct_fields__)
    return None


def _object_type(shape: Any) -> Any:
    """C{shape} without its annotations and its C{| None}."""
    while typing.get_origin(shape) is Annotated:
        shape = typing.get_args(shape)[0]
    members = [m for m in typing.get_args(shape) if m is not type(None)]
    if isinstance(shape, types.UnionType) or typing.get_origin(shape) is Union:
        return _object_type(members[0]) if len(members) == 1 else shape
    return shape


SlaveDetail = dict[str, Any]
_THIS_UUID = Annotated[str, Meta(description="this connection's uuid")]
_SLAVE_DETAILS = Annotated[list[SlaveDetail] | SlavePage, Meta(
    description="asked with a plain question: one object per slave connection, as many as a frame"
                " holds; asked with an InfoQuery: a page of them",
)]
_STATUS = Annotated[dict[str, Any], Meta(description="the cluster at a glance")]
_SUMMARY = Annotated[dict[str, Any], Meta(description="the cluster's counts and its nodes in trouble")]

MESSAGES: dict[str, Message] = {}


def _declare(*messages: Message) -> None:
    for message in messages:
        assert message.type not in MESSAGES, message.type
        MESSAGES[message.type] = message


_declare(
    Message("hello", Hello, (SLAVE, CLIENT),
            "Opens every connection.  Always answered.",
            replies={"welcome": Welcome},
            on_refusal={"close": True, "supported": list(SUPPORTED_VERSIONS)},
            max_bytes=MAX_SMALL_BYTES),
    Message("welcome", Welcome, (MASTER,), "The answer to hello.", reply_only=True),
    Message("ping", Annotated[float | None, Meta(description="the sender's clock, in seconds")], ANYONE,
            "A keepalive, sent every keepalive interval.  Always answered.",
            replies={"pong": Annotated[float | None, Meta(description="the ping's payload, echoed")]},
            max_bytes=MAX_SMALL_BYTES),
    Message("pong", Annotated[float | None, Meta(description="the ping's payload, echoed")], ANYONE,
            "The answer to ping; the round trip is recorded.", max_bytes=MAX_SMALL_BYTES),
    Message("message", str, ANYONE, "Free text, logged by the receiver (clipped).",
            max_bytes=MAX_MESSAGE_BYTES),
    Message("computer_details", ComputerDetails, (SLAVE,),
            "The slave's machine facts, once a connection.", max_bytes=MAX_FACTS_BYTES),
    Message("vitals", Vitals, (SLAVE,), "The slave's readings, every --vitals seconds.",
            max_bytes=MAX_FACTS_BYTES),
    Message("info", Annotated[str | InfoQuery, Meta(
                description=f"one of {', '.join(INFO_QUESTIONS)}, or an InfoQuery",
            )],
            (SLAVE, CLIENT),
            "A question about the master or the cluster.  Always answered.",
            max_bytes=MAX_QUESTION_BYTES,
            replies={"master_info": ComputerDetails, "uuid": _THIS_UUID,
                     "slave_details": _SLAVE_DETAILS, "status": _STATUS, "slaves": SlavePage,
                     "summary": _SUMMARY}),
    Message("master_info", ComputerDetails, (MASTER,), "The master's own machine facts.",
            reply_only=True),
    Message("uuid", _THIS_UUID, (MASTER,), "The asking connection's uuid.", reply_only=True),
    Message("slave_details", _SLAVE_DETAILS, (MASTER,),
            "Slave connections: uuid, address, hostname, connected_at, last_seen, rtt_ms,"
            " vitals, vitals_received_at, computer_details, slots, running_tasks,"
            " ready_tasks.",
            reply_only=True),
    Message("status", _STATUS, (MASTER,),
            "The cluster at a glance, as picluster status shows it: master (as /api/master),"
            " tasks (counts by state), summary (as info summary), and a page of slaves (as"
            " /api/slaves: slaves, total, more, next).",
            reply_only=True),
    Message("slaves", SlavePage, (MASTER,),
            "A page of slaves, connected and lately left, as /api/slaves lists them.",
            reply_only=True),
    Message("summary", _SUMMARY, (MASTER,),
            "The cluster in counts and a few names, the same size for any number of slaves:"
            " slaves (connected, left, in_trouble), troubles (count of each), slots,"
            " running_tasks, ready_tasks (held ready beyond the slots), hottest, in_trouble"
            " (the worst few, as /api/slaves lists them).",
            reply_only=True),
    Message("worker", WorkerOffer, (SLAVE,), "The slave offers to run tasks.",
            replies={"worker_accepted": WorkerAccepted}),
    Message("worker_accepted", WorkerAccepted, (MASTER,), "The answer to worker.",
            reply_only=True),
    Message("task_result", TaskResult, (SLAVE,),
            "A run ended.  Answered with ack once the result is stored on disk.",
            replies={"ack": None}),
    Message("run_task", RunTask, (MASTER,),
            "Run a task.  Answered with ack once the run has started, or bad_message"
            f" when refused (the busy refusals, {' and '.join(map(repr, BUSY_REFUSALS))},"
            " cost the task no attempt).",
            replies={"ack": None}),
    Message("cancel_task", Run, (MASTER,), "Stop a run; it is never reported.",
            replies={"ack": None}),
    Message("submit", Submit, (CLIENT, SLAVE), "Submit tasks, all or none.",
            replies={"submitted": Submitted}, indexed="tasks"),
    Message("submitted", Submitted, (MASTER,), "The answer to submit.", reply_only=True),
    Message("tasks", TasksQuery | None, (CLIENT, SLAVE), "List tasks, by id.",
            replies={"tasks": TaskList}),
    Message("cancel", TaskRef, (CLIENT, SLAVE), "Cancel an open task.",
            replies={"tasks": TaskList}),
    Message("watch", Watch, (CLIENT, SLAVE),
            "Be told when tasks end: a task_update for each, now or later.",
            replies={"tasks": TaskList}),
    Message("task_update", TaskUpdate, (MASTER,), "A watched task has ended."),
    Message("ack", None, ANYONE, "The request was handled.", reply_only=True),
    Message("bad_message", Refusal, ANYONE,
            "The message was refused: what was wrong.  Never answered."),
    Message("error", ServiceFailure, ANYONE,
            "The receiver failed to serve a well-formed request."),
)


#: What every authenticated peer may send: the connection's own upkeep.
_UPKEEP = frozenset({"ping", "pong", "message", "bad_message", "error"})

#: The message types a secure master serves to each credential once its
#: hello is proven; anything else is refused as "not served to a ...".  A
#: slave may ask C{info} only about the master itself (computer_details,
#: uuid), and a read-only client only looks.
SERVED: dict[str, frozenset[str]] = {
    "slave": _UPKEEP | {"computer_details", "vitals", "worker", "task_result", "info"},
    "client": _UPKEEP | {"info", "submit", "tasks", "cancel", "watch"},
    "read-only": _UPKEEP | {"info", "tasks", "watch"},
}
#: What a slave credential may ask with C{info}.
SLAVE_INFO = ("computer_details", "uuid")

#: What a secure master serves before a proven hello: the hello alone.
BEFORE_HELLO = frozenset({"hello"})


#: The largest payload of each message type that has a limit of its own.
MAX_PAYLOAD: dict[str, int] = {
    name: message.max_bytes for name, message in MESSAGES.items() if message.max_bytes is not None
}

#: Decoders of each message type's payload, made once.
DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    name: msgspec.json.Decoder(message.payload) for name, message in MESSAGES.items()
}

_REPLY_DECODERS: dict[tuple[str, str], msgspec.json.Decoder[Any]] = {
    (name, reply): msgspec.json.Decoder(shape)
    for name, message in MESSAGES.items()
    for reply, shape in message.replies.items()
}


def reply_decoder(request_type: str | None, reply_type: str) -> msgspec.json.Decoder[Any] | None:
    """
    The decoder of a C{reply_type} answering a C{request_type} (C{None}: a
    request we no longer wait for), or C{None} where nothing is declared and
    the payload is taken as plain JSON for the caller to judge.
    """
    if request_type is None:
        return DECODERS.get(reply_type) if reply_type == "pong" else None
    return _REPLY_DECODERS.get((request_type, reply_type))

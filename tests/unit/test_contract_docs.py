"""docs/contracts.md cannot drift from the code: every JSON example is decoded by Rollout's
own decoder and validated against the committed schema, every event, dead-letter code and
command action has an example, and the topic tables say what topics.yaml declares."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from app.core import events
from app.core.contract_schemas import EVENTS, file_name
from app.core.events import Action, ControlCommand, DeadLetter, DeadLetterCode, InferenceRequest
from app.core.oip import from_oip
from app.core.topic_spec import TopicsFile, parse_topics

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "contracts.md"
TEXT = DOC.read_text(encoding="utf-8")

# An example is a ```json block right after the comment that names its event type.
EXAMPLE = re.compile(r"<!-- example: (\w+) -->\s*\n```json\n(.*?)\n```", re.DOTALL)
EXAMPLES = [
    (m.group(1), m.group(2), TEXT.count("\n", 0, m.start()) + 1) for m in EXAMPLE.finditer(TEXT)
]
EVENT_NAMES = {event.__name__ for event in EVENTS}
# Not an event of Rollout's but a body it takes: checked by the parser that takes it.
OIP_REQUEST = "OipRequest"


def _examples_of(name: str) -> list[str]:
    return [body for kind, body, _ in EXAMPLES if kind == name]


def test_every_json_block_is_a_tagged_example() -> None:
    assert TEXT.count("```json") == len(EXAMPLES), (
        "docs/contracts.md has a ```json block without a `<!-- example: EventName -->` line"
        " right before it (untagged examples are not checked)"
    )


@pytest.mark.parametrize(
    ("kind", "body", "line"), EXAMPLES, ids=[f"{k}@{n}" for k, _, n in EXAMPLES]
)
def test_example_is_a_valid_event(kind: str, body: str, line: int) -> None:
    if kind == OIP_REQUEST:  # an Open Inference Protocol v2 request, with its header
        from_oip(json.loads(body), [("rollout-deployment", b"churn")])  # raises OipError
        return
    assert kind in EVENT_NAMES, f"line {line}: {kind} is not an event of app/core/events.py"
    model = getattr(events, kind)
    events.decode(model, body)  # raises pydantic.ValidationError naming what is wrong
    schema = json.loads((REPO / "schemas" / file_name(model)).read_text(encoding="utf-8"))
    jsonschema.validate(json.loads(body), schema, cls=jsonschema.Draft202012Validator)


def test_every_event_has_an_example() -> None:
    assert {kind for kind, _, _ in EXAMPLES} >= EVENT_NAMES


def test_requests_are_shown_with_features_by_name_and_as_a_list() -> None:
    forms = {
        type(events.decode(InferenceRequest, b).features) for b in _examples_of("InferenceRequest")
    }
    assert forms == {dict, list}


def test_every_dead_letter_code_has_an_example() -> None:
    codes = {events.decode(DeadLetter, b).error.code for b in _examples_of("DeadLetter")}
    assert codes == set(DeadLetterCode)


def test_every_command_action_has_an_example() -> None:
    actions = {events.decode(ControlCommand, b).action for b in _examples_of("ControlCommand")}
    assert actions == set(Action)


def test_every_dead_letter_code_is_in_the_code_table() -> None:
    listed = set(re.findall(r"^\| `(\w+)` \|", TEXT, re.MULTILINE))
    assert {code.value for code in DeadLetterCode} <= listed


# -- the topic tables -------------------------------------------------------------------


def _table(header_start: str) -> list[dict[str, str]]:
    """The Markdown table whose header row starts with ``header_start``, as dicts by column
    (backticks stripped)."""
    lines = TEXT.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip().replace("`", "") for c in line.strip().strip("|").split("|")]
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


@pytest.fixture(scope="module")
def declared() -> TopicsFile:
    return parse_topics(yaml.safe_load((REPO / "topics.yaml").read_text(encoding="utf-8")))


def _retention(configs: dict[str, str]) -> str:
    if configs.get("cleanup.policy") == "compact":
        return "compacted"
    ms = int(configs["retention.ms"])
    return "forever" if ms < 0 else f"{ms // 86_400_000} days"


def test_topic_table_matches_topics_yaml(declared: TopicsFile) -> None:
    rows = {r["topic"]: r for r in _table("| topic | key | value | partitions")}
    specs = declared.by_name()
    assert set(rows) == set(specs), "the topic table and topics.yaml list different topics"
    grouped = {name for group in declared.co_partitioned for name in group}
    for name, spec in specs.items():
        row = rows[name]
        assert int(row["partitions"]) == spec.partitions, name
        assert row["co-partitioned"] == ("yes" if name in grouped else "no"), name
        assert row["cleanup.policy"] == spec.configs["cleanup.policy"], name
        assert row["retention"] == _retention(spec.configs), name


def test_co_partitioned_topics_are_keyed_by_deployment(declared: TopicsFile) -> None:
    rows = {r["topic"]: r for r in _table("| topic | key | value | partitions")}
    for group in declared.co_partitioned:
        for name in group:
            # The analysis snapshots are keyed by partition and written to it explicitly.
            assert rows[name]["key"] == "deployment" or rows[name]["key"].startswith("p<N>"), name


def test_topic_table_values_are_events() -> None:
    values = {
        v.strip()
        for r in _table("| topic | key | value | partitions")
        for v in r["value"].split(",")
    }
    assert values >= EVENT_NAMES
    assert values - EVENT_NAMES == {"analysis snapshot", "artifact chunk"}


def test_writers_and_readers_table_lists_every_topic(declared: TopicsFile) -> None:
    rows = _table("| topic | written by | read by |")
    assert [r["topic"] for r in rows] == [t.name for t in declared.topics]

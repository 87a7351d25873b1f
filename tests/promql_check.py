"""Checks the PromQL of the chart's dashboard and alerts against what the operator exports:
every metric name must have series in a scrape, every label an expression names (matchers,
by/without, on/ignoring, group_left/right, $labels in annotations) must be on one of them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import promql_parser
from prometheus_client.parser import text_string_to_metric_families

# Labels the prometheus-operator's scrape adds to every series (the ServiceMonitor's target).
TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}
)
# What Grafana puts in place of its variables before a query reaches Prometheus.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "30s",
    "$__range": "1h",
    "${namespace}": ".*",
    "$namespace": ".*",
}
LABEL_VALUES = re.compile(
    r"^\s*label_values\((?:(?P<expr>.+),\s*)?(?P<label>[A-Za-z_]\w*)\s*\)\s*$"
)
TEMPLATE_LABEL = re.compile(r"\$labels\.([A-Za-z_]\w*)")
# Functions whose arguments name a label that the result has (the destination label).
NEW_LABEL_ARGUMENT = {"label_replace": 1, "label_join": 1}
SOURCE_LABEL_ARGUMENTS = {"label_replace": (3,), "label_join": (3, 4, 5, 6, 7, 8)}


def scraped_labels(text: str) -> dict[str, set[str]]:
    """Sample name (`x_total`, `x_bucket`…) → the label names its series carry, from an
    exposition; a family without series has no entry."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


@dataclass
class References:
    metrics: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)  # read from series
    made: set[str] = field(default_factory=set)  # created by the expression (label_replace)


def _vector_labels(selector: Any) -> Iterator[str]:
    for matcher in selector.matchers.matchers:
        yield matcher.name
    for alternative in selector.matchers.or_matchers or ():
        for matcher in alternative:
            yield matcher.name


def references(expr: str) -> References:
    """The metric names and label names a PromQL expression uses (raises ValueError when it
    does not parse)."""
    found = References()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            labels = set(_vector_labels(node))
            name = node.name
            if name is None:
                names = [m.value for m in node.matchers.matchers if m.name == "__name__"]
                name = names[0] if names else None
            if name is None:
                raise ValueError(f"a selector without a metric name: {node}")
            found.metrics.add(name)
            found.labels |= labels - {"__name__"}
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            found.labels |= set(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            modifier = node.modifier
            if modifier.matching is not None:
                found.labels |= set(modifier.matching.labels)
            found.labels |= set(modifier.group_labels or ())
        elif isinstance(node, promql_parser.Call) and node.func.name in NEW_LABEL_ARGUMENT:
            args = node.args
            found.made.add(args[NEW_LABEL_ARGUMENT[node.func.name]].val)
            for index in SOURCE_LABEL_ARGUMENTS[node.func.name]:
                if index < len(args):
                    found.labels.add(args[index].val)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def problems(
    expr: str, scraped: Mapping[str, set[str]], extra_labels: Iterable[str] = ()
) -> list[str]:
    """What in `expr` the scrape does not have; `extra_labels`: labels used beside the
    expression (an alert's $labels, a label_values variable)."""
    try:
        found = references(expr)
    except ValueError as error:
        return [f"{expr!r} does not parse: {error}"]
    missing = [f"{expr!r}: no series of {name}" for name in sorted(found.metrics - set(scraped))]
    available = set(TARGET_LABELS) | found.made
    for name in found.metrics:
        available |= scraped.get(name, set())
    for label in sorted((found.labels | set(extra_labels)) - available - {"__name__"}):
        missing.append(f"{expr!r}: no label {label} on {', '.join(sorted(found.metrics))}")
    return missing


def grafana_query(text: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        text = text.replace(variable, value)
    if "$" in text:
        raise ValueError(f"a Grafana variable this check does not know: {text!r}")
    return text


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """(PromQL, labels used beside it) of every panel target and query variable, rows and
    their panels included."""
    queries: list[tuple[str, list[str]]] = []

    def panels(items: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels") or ())

    for panel in panels(dashboard.get("panels") or ()):
        for target in panel.get("targets") or ():
            queries.append((grafana_query(target["expr"]), []))
    for variable in (dashboard.get("templating") or {}).get("list") or ():
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, Mapping) else query
        match = LABEL_VALUES.match(text)
        if match is None:
            queries.append((grafana_query(text), []))
        elif match["expr"] is None:
            raise ValueError(f"label_values without a metric scans every series: {text!r}")
        else:
            queries.append((grafana_query(match["expr"]), [match["label"]]))
    return queries


def rule_queries(rule_groups: Iterable[Mapping[str, Any]]) -> list[tuple[str, list[str]]]:
    """(PromQL, the $labels its annotations and labels name) of every rule of the groups."""
    queries = []
    for group in rule_groups:
        for rule in group["rules"]:
            texts = [
                *(rule.get("annotations") or {}).values(),
                *(rule.get("labels") or {}).values(),
            ]
            used = sorted({label for text in texts for label in TEMPLATE_LABEL.findall(str(text))})
            queries.append((rule["expr"], used))
    return queries

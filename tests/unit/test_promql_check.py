"""The checker the observability test relies on finds what it is for: a misspelt metric or
label in a dashboard query or an alert fails it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.promql_check import dashboard_queries, problems, rule_queries, scraped_labels

DASHBOARD = Path(__file__).parents[2] / "deploy/helm/infisical-sync/files/dashboard.json"
SCRAPE = """\
# TYPE infisical_sync_ready gauge
infisical_sync_ready{kind="SecretSync",namespace="ns",name="a"} 1.0
# TYPE infisical_sync_not_ready_reason gauge
infisical_sync_not_ready_reason{kind="SecretSync",namespace="ns",name="a",reason="Synced"} 1.0
# TYPE infisical_sync_sync_duration_seconds histogram
infisical_sync_sync_duration_seconds_bucket{le="1.0"} 1.0
infisical_sync_sync_duration_seconds_bucket{le="+Inf"} 1.0
infisical_sync_sync_duration_seconds_count 1.0
infisical_sync_sync_duration_seconds_sum 0.2
# TYPE infisical_sync_rate_limited counter
# TYPE infisical_sync_leader gauge
infisical_sync_leader 1.0
# TYPE infisical_sync_shard_info gauge
infisical_sync_shard_info{shard="0",shards="1"} 1.0
"""
SCRAPED = scraped_labels(SCRAPE)


@pytest.mark.parametrize(
    "expr",
    [
        'infisical_sync_not_ready_reason{reason!~"Suspended"} and on (kind, namespace, name) '
        "(infisical_sync_ready == 0)",
        "histogram_quantile(0.9, sum by (le) (rate(infisical_sync_sync_duration_seconds_bucket[5m])))",
        "sum(rate(infisical_sync_sync_duration_seconds_sum[5m]))",
        "sum by (namespace, shard) (infisical_sync_leader * ignoring (shard, shards) "
        "group_left (shard, shards) infisical_sync_shard_info) == 0",  # namespace: the target's
        'label_replace(infisical_sync_ready, "object", "$1", "name", "(.*)") * on (object) '
        'label_replace(infisical_sync_ready, "object", "$1", "name", "(.*)")',
    ],
)
def test_what_the_scrape_has_passes(expr: str) -> None:
    assert problems(expr, SCRAPED) == []


@pytest.mark.parametrize(
    ("expr", "labels", "missing"),
    [
        ("infisical_sync_redy == 0", [], "no series of infisical_sync_redy"),
        ("sum(rate(infisical_sync_sync_duration_seconds[5m]))", [], "no series of"),
        # Declared (# TYPE) but without series: its labels could not be checked.
        ("rate(infisical_sync_rate_limited_total[5m])", [], "no series of"),
        ('infisical_sync_ready{kind="SecretSync", nmespace="x"}', [], "no label nmespace"),
        ("sum by (reason) (infisical_sync_ready)", [], "no label reason"),
        ("sum without (knd) (infisical_sync_ready)", [], "no label knd"),
        ("infisical_sync_ready and on (uid) infisical_sync_not_ready_reason", [], "no label uid"),
        (
            "infisical_sync_leader * on () group_left (shrd) infisical_sync_shard_info",
            [],
            "no label shrd",
        ),
        ("infisical_sync_ready == 0", ["reason"], "no label reason"),  # an alert's $labels
        ("sum by (le) (infisical_sync_ready)", [], "no label le"),  # only on _bucket
        ("infisical_sync_ready ==", [], "does not parse"),
    ],
)
def test_a_misspelt_or_missing_name_is_reported(expr: str, labels: list[str], missing: str) -> None:
    found = problems(expr, SCRAPED, labels)
    assert any(missing in problem for problem in found), found


def test_the_queries_of_a_dashboard_and_rules_are_all_found() -> None:
    dashboard = {
        "panels": [
            {"type": "row", "panels": [{"targets": [{"expr": "a[$__rate_interval]"}]}]},
            {"targets": [{"expr": 'b{namespace=~"$namespace"}'}, {"expr": "c"}]},
        ],
        "templating": {
            "list": [
                {"type": "datasource", "query": "prometheus"},
                {"type": "query", "query": {"query": "label_values(d, namespace)"}},
            ]
        },
    }
    assert dashboard_queries(dashboard) == [
        ("a[1m]", []),
        ('b{namespace=~".*"}', []),
        ("c", []),
        ("d", ["namespace"]),
    ]
    with pytest.raises(ValueError, match="does not know"):
        dashboard_queries({"panels": [{"targets": [{"expr": "a{x=~'$unknown'}"}]}]})
    groups = [
        {
            "rules": [
                {
                    "expr": "x > 0",
                    "labels": {"severity": "warning"},
                    "annotations": {"summary": "{{ $labels.namespace }}/{{ $labels.name }}"},
                }
            ]
        }
    ]
    assert rule_queries(groups) == [("x > 0", ["name", "namespace"])]


def test_every_query_of_the_charts_dashboard_parses() -> None:
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    assert len(queries) >= 10
    for expr, _labels in queries:
        assert not [p for p in problems(expr, {}) if "does not parse" in p]


def test_the_charts_dashboard_is_well_formed() -> None:
    """What Grafana needs to show every panel: unique ids, one data source, unique refIds."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        if panel["type"] == "row":
            continue
        refs = [target["refId"] for target in panel["targets"]]
        assert len(set(refs)) == len(refs) and refs, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
    names = [variable["name"] for variable in dashboard["templating"]["list"]]
    assert names == ["datasource", "namespace"]

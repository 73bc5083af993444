"""The PromQL the chart ships (the Grafana dashboards' queries and the alert rules) and the metric names
each query reads.

Used by tests/helm/test_dashboards.py (promtool checks every query) and tests/test_metrics_endpoints.py
(every name is in the scrape of a running suite). The name extraction is a tokenizer, not a parser:
string literals, comments, label matchers, range selectors and grouping clauses are removed, and what
is left that is an identifier but neither a keyword nor a function call is a metric name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.helm.rendering import CHART_DIR

DASHBOARDS_DIR = CHART_DIR / "dashboards"
RULES_FILE = CHART_DIR / "rules" / "awareness-alerts.yaml"

# What promtool sees in place of Grafana's variables: any valid duration or label value will do.
GRAFANA_VARIABLES = {
    "__rate_interval": "2m",
    "__interval": "30s",
    "__range": "6h",
    "namespace": "awareness",
}
KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "inf",
        "nan",
        "atan2",
        # Aggregations, for the `sum by (x) (...)` form where no parenthesis follows the name.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    }
)
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")
_NAME_MATCHER = re.compile(r'__name__\s*(=~|=)\s*"((?:[^"\\]|\\.)*)"')
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_LABEL_VALUES = re.compile(r"label_values\((.+),\s*\w+\)", re.DOTALL)


@dataclass(frozen=True)
class Query:
    """One PromQL expression the chart ships, and where it is (for messages)."""

    where: str
    expr: str


def _without_strings_and_comments(expr: str) -> str:
    """The expression with each string literal emptied and each `#` comment removed."""
    out: list[str] = []
    index = 0
    while index < len(expr):
        char = expr[index]
        if char in "\"'`":
            end = index + 1
            while end < len(expr) and expr[end] != char:
                end += 2 if expr[end] == "\\" and char != "`" else 1
            out.append(char * 2)
            index = end + 1
        elif char == "#":
            newline = expr.find("\n", index)
            index = len(expr) if newline < 0 else newline
        else:
            out.append(char)
            index += 1
    return "".join(out)


def metric_family(name: str) -> str:
    """A histogram's series name mapped to its family (`x_bucket` -> `x`); other names unchanged."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads by name (histogram series mapped to their family)."""
    text = _without_strings_and_comments(expr)
    text = re.sub(r"\{[^{}]*\}", "{}", text)
    text = re.sub(r"\[[^\[\]]*\]", "[]", text)
    while _GROUPING.search(text):
        text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call is None and name not in KEYWORDS:
            names.add(metric_family(name))
    names.update(metric_family(value) for op, value in _NAME_MATCHER.findall(expr) if op == "=")
    return names


def name_patterns(expr: str) -> set[str]:
    """The regular expressions an expression matches metric names with (`{__name__=~"..."}`)."""
    return {value for op, value in _NAME_MATCHER.findall(expr) if op == "=~"}


def grafana_to_promql(expr: str) -> str:
    """Grafana's `$var` / `${var}` replaced by values promtool accepts; an unknown variable is an error."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in GRAFANA_VARIABLES:
            raise KeyError(f"no test value for the Grafana variable ${name}")
        return GRAFANA_VARIABLES[name]

    return _VARIABLE.sub(value, expr)


# --- what the chart ships ---------------------------------------------------------------------------


def dashboards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard, for every dashboard the chart embeds."""
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data (rows left out, the panels of collapsed rows included)."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_queries() -> list[Query]:
    """Each panel target's expr and each query variable's metric selector, as Grafana sends them."""
    queries: list[Query] = []
    for file, dashboard in dashboards().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                where = f"{file}: {panel['title']} ({target['refId']})"
                queries.append(Query(where, target["expr"]))
        for variable in dashboard["templating"]["list"]:
            if variable["type"] != "query":
                continue
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            values = _LABEL_VALUES.fullmatch(text)
            queries.append(Query(f"{file}: variable {variable['name']}", values.group(1) if values else text))
    return queries


def rule_queries() -> list[Query]:
    document = yaml.safe_load(RULES_FILE.read_text())
    return [
        Query(f"{RULES_FILE.name}: {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in document["groups"]
        for rule in group["rules"]
    ]


def shipped_queries() -> list[Query]:
    return [*dashboard_queries(), *rule_queries()]


def recording_rules_file(queries: list[Query], path: Path) -> Path:
    """A rules file with each query as a recording rule, Grafana variables substituted, for promtool."""
    rules = [
        {"record": f"awareness:dashboard_query:{index}", "expr": grafana_to_promql(query.expr)}
        for index, query in enumerate(queries)
    ]
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}))
    return path

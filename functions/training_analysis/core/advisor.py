"""The optimization advisor: every finding's recommendation ranked into one list of actions
(severity first, then the caller's focus, then how many findings an action addresses), each
backed by the knowledge-base entries that match it."""

from __future__ import annotations

from dropwire.functions.training_analysis.core.knowledge import KnowledgeBase, KnowledgeQuery
from dropwire.functions.training_analysis.core.model import SEVERITY_RANK, AgentResult, Analysis, RankedAction

NAME = "OptimizationAdvisorAgent"
# Knowledge-base domain of a rule family.
DOMAINS = {"TRAIN": "training", "DATA": "data", "DQ": "data", "INTEGRATION": None}
MAX_ACTIONS = 10
MIN_CONFIDENCE = 0.2


def _topic(analysis: Analysis) -> str:
    return analysis.rule_id.split(".", 1)[-1].replace("_", " ").lower()


def advise(results: list[AgentResult], knowledge: KnowledgeBase, focus: list[str]) -> tuple[AgentResult, list[RankedAction]]:
    analyses = [a for r in results for a in r.analysis]
    grouped: dict[str, list[Analysis]] = {}
    for analysis in analyses:
        grouped.setdefault(analysis.recommendations.action, []).append(analysis)
    focus_words = [f.lower().replace("_", " ") for f in focus]
    scored = []
    for action, behind in grouped.items():
        severity = max(SEVERITY_RANK[a.findings.severity] for a in behind)
        focused = any(word in _topic(a) or word in a.findings.description.lower() for a in behind for word in focus_words)
        priority = 10.0 * severity + (5.0 if focused else 0.0) + len(behind)
        lead = max(behind, key=lambda a: SEVERITY_RANK[a.findings.severity])
        family = lead.rule_id.split(".", 1)[0]
        answer = knowledge.query(KnowledgeQuery(query=f"{_topic(lead)} {action}", domain=DOMAINS.get(family), max_results=2))
        sources = [item.id for item in answer.results if item.confidence >= MIN_CONFIDENCE]
        scored.append((priority, action, behind, lead, sources))
    scored.sort(key=lambda s: (-s[0], s[1]))
    actions = [RankedAction(rank=rank, action=action, addresses=sorted({a.rule_id for a in behind}), priority=priority,
                            rationale=lead.recommendations.rationale or lead.findings.description, sources=sources)
               for rank, (priority, action, behind, lead, sources) in enumerate(scored[:MAX_ACTIONS], start=1)]
    return AgentResult(agent_name=NAME, status="completed"), actions

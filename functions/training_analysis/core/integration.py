"""The cross-artifact integration step: findings from different analyzers that explain each
other (e.g. an overfitting signal measured on a tiny validation split), as findings of their own."""

from __future__ import annotations

from dropwire.functions.training_analysis.core.model import AgentResult, Analysis, Findings, Recommendations, Severity

NAME = "CrossArtifactIntegrationAgent"

# (rule a, rule b, id, severity, what the pair means, what to do)
LINKS: tuple[tuple[str, str, str, Severity, str, str], ...] = (
    ("TRAIN.OVERFITTING", "DATA.TINY_VALIDATION", "INTEGRATION.NOISY_OVERFIT_SIGNAL", "warning",
     "the overfitting signal comes from a tiny validation split: part of the rise may be noise",
     "Enlarge the validation split before acting on early stopping or model choice"),
    ("TRAIN.OVERFITTING", "DATA.CLASS_IMBALANCE", "INTEGRATION.IMBALANCE_OVERFIT", "warning",
     "the model overfits while classes are imbalanced: it likely memorises the minority class",
     "Reweight or resample the minority class and regularise together"),
    ("TRAIN.OVERFITTING", "DATA.SPLIT_OVERLAP", "INTEGRATION.LEAKY_VALIDATION", "critical",
     "validation shares examples with training, so the true overfitting is worse than the curve shows",
     "Deduplicate the splits, then re-train and re-check"),
    ("TRAIN.DIVERGENCE", "TRAIN.GRADIENT_UNSTABLE", "INTEGRATION.EXPLODING_GRADIENTS", "critical",
     "gradient spikes explain the divergence",
     "Clip gradients and lower the learning rate"),
    ("TRAIN.NONFINITE", "TRAIN.GRADIENT_UNSTABLE", "INTEGRATION.EXPLODING_GRADIENTS", "critical",
     "gradient spikes explain the non-finite loss",
     "Clip gradients and lower the learning rate"),
    ("TRAIN.DIVERGENCE", "TRAIN.LR_TOO_HIGH", "INTEGRATION.LR_TOO_HIGH", "critical",
     "the loss oscillated before it diverged: the learning rate is too high",
     "Lower the learning rate 3-10x"),
    ("DATA.LABEL_SHIFT", "TRAIN.OVERFITTING", "INTEGRATION.SHIFTED_VALIDATION", "warning",
     "the validation split has other class proportions, so its loss can rise without memorisation",
     "Stratify the split before concluding the model overfits"),
    ("DATA.TINY_VALIDATION", "DATA.CLASS_IMBALANCE", "INTEGRATION.MINORITY_UNMEASURED", "warning",
     "a tiny validation split of imbalanced data holds very few minority examples: minority performance is unmeasured",
     "Stratify the split and enlarge it so each class has enough validation examples"),
)


def integrate(artifact_results: list[AgentResult]) -> AgentResult:
    by_rule: dict[str, Analysis] = {a.rule_id: a for r in artifact_results for a in r.analysis}
    found: list[Analysis] = []
    made: set[str] = set()
    for first, second, rule_id, severity, meaning, action in LINKS:
        if first in by_rule and second in by_rule and rule_id not in made:
            made.add(rule_id)
            a, b = by_rule[first], by_rule[second]
            found.append(Analysis(
                rule_id=rule_id,
                findings=Findings(description=f"{first} + {second}: {meaning}", severity=severity,
                                  evidence={"first": first, "second": second}, step=a.findings.step or b.findings.step),
                recommendations=Recommendations(action=action, rationale=f"{a.findings.description}; {b.findings.description}"),
                best_checkpoint_step=a.best_checkpoint_step or b.best_checkpoint_step, related=[first, second]))
    return AgentResult(agent_name=NAME, status="completed", analysis=found)

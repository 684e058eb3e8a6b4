"""A Label Studio label config read back (its object and control tags) and every prediction
checked against it before anything is sent: a result item must name a control of the config
(`from_name`), that control's object (`to_name`), the control's type, and values the control
allows (a choice or label it lists; a span inside the task's text, with that text)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

# Control tags the schemas use -> the result item type Label Studio gives them.
CONTROL_TYPES = {"Choices": "choices", "Labels": "labels", "TextArea": "textarea"}
OPTION_TAGS = {"Choices": "Choice", "Labels": "Label"}


class LabelConfigInvalid(ValueError):
    pass


@dataclass(frozen=True)
class Control:
    name: str
    type: str
    to_name: str
    options: frozenset[str]
    single: bool


@dataclass(frozen=True)
class LabelConfig:
    #: object tag name -> the task data key it shows ($text -> "text")
    objects: dict[str, str]
    controls: dict[str, Control]

    @classmethod
    def parse(cls, xml: str) -> LabelConfig:
        try:
            root = ET.fromstring(xml)
        except ET.ParseError as exc:
            raise LabelConfigInvalid(f"the label config is not XML: {exc}") from None
        objects, controls = {}, {}
        for element in root.iter():
            value, name = element.get("value", ""), element.get("name", "")
            if name and value.startswith("$") and element.tag not in CONTROL_TYPES:
                objects[name] = value[1:]
            if element.tag in CONTROL_TYPES:
                options = frozenset(o.get("value", "") for o in element.iter(OPTION_TAGS.get(element.tag, "-")))
                controls[name] = Control(name=name, type=CONTROL_TYPES[element.tag], to_name=element.get("toName", ""),
                                         options=options, single=element.get("choice", "single") == "single")
        for control in controls.values():
            if control.to_name not in objects:
                raise LabelConfigInvalid(f"control {control.name!r} points at {control.to_name!r}, which is no object tag")
        return cls(objects=objects, controls=controls)

    def problems(self, task: dict[str, Any]) -> list[str]:
        """Everything in `task` (its data and predictions) that Label Studio would not take or
        would show wrongly; empty when the task fits."""
        data = task.get("data", {})
        found = [f"data has no {key!r} for object {name!r}" for name, key in self.objects.items()
                 if not isinstance(data.get(key), str)]
        for p, prediction in enumerate(task.get("predictions", [])):
            where = f"prediction {p}"
            if not isinstance(prediction.get("model_version"), str) or not prediction["model_version"]:
                found.append(f"{where}: model_version must be a non-empty string")
            score = prediction.get("score")
            if score is not None and not (isinstance(score, (int, float)) and 0.0 <= score <= 1.0):
                found.append(f"{where}: score must be a number from 0 to 1, got {score!r}")
            for r, item in enumerate(prediction.get("result", [])):
                found.extend(f"{where} result {r}: {problem}" for problem in self._item_problems(item, data))
        return found

    def _item_problems(self, item: dict[str, Any], data: dict[str, Any]) -> list[str]:
        control = self.controls.get(item.get("from_name", ""))
        if control is None:
            return [f"from_name {item.get('from_name')!r} is not a control of the label config "
                    f"({sorted(self.controls)})"]
        problems = []
        if item.get("to_name") != control.to_name:
            problems.append(f"to_name {item.get('to_name')!r} is not {control.to_name!r}, the object of {control.name!r}")
        if item.get("type") != control.type:
            problems.append(f"type {item.get('type')!r} is not {control.type!r}, the type of {control.name!r}")
        value = item.get("value")
        if not isinstance(value, dict):
            return [*problems, "value must be an object"]
        text = data.get(self.objects.get(control.to_name, ""), "")
        if control.type == "choices":
            choices = value.get("choices")
            if not isinstance(choices, list) or not choices or (control.single and len(choices) != 1):
                problems.append(f"value.choices must list {'one' if control.single else 'some'} choice(s)")
            else:
                problems += [f"choice {c!r} is not one of {sorted(control.options)}" for c in choices
                             if c not in control.options]
        elif control.type == "labels":
            labels, start, end = value.get("labels"), value.get("start"), value.get("end")
            if not isinstance(labels, list) or not labels:
                problems.append("value.labels must list a label")
            else:
                problems += [f"label {x!r} is not one of {sorted(control.options)}" for x in labels
                             if x not in control.options]
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
                problems.append(f"span {start!r}..{end!r} is not inside the text ({len(text)} characters)")
            elif value.get("text") != text[start:end]:
                problems.append(f"span text {value.get('text')!r} is not the text at {start}..{end} "
                                f"({text[start:end]!r})")
        elif control.type == "textarea":
            texts = value.get("text")
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                problems.append("value.text must be a list of strings")
        return problems

"""Just enough CloudFormation to read deploy/'s template as CloudFormation would for a set of parameters:
YAML with the short-form tags (!Ref, !Sub, ...), parameter defaults, conditions, and the intrinsic functions
the template uses. Resources are not created: a reference to one resolves to a placeholder that names it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

PSEUDO = {
    "AWS::Region": "eu-west-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::StackName": "soci-index",
    "AWS::URLSuffix": "amazonaws.com",
}
NO_VALUE = object()  # AWS::NoValue: the property or list item is left out


class _Loader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation's short-form tags into their long form."""


def _construct_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    key = suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}"
    return {key: value}


_Loader.add_multi_constructor("!", _construct_tag)


def load_template(path: Path) -> dict[str, Any]:
    doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # a SafeLoader subclass
    assert isinstance(doc, dict)
    return doc


class Stack:
    """The template with parameter values (defaults unless given); ``resolve`` evaluates intrinsics."""

    def __init__(self, template: Mapping[str, Any], parameters: Mapping[str, str] | None = None) -> None:
        self.template = template
        given = dict(parameters or {})
        self.parameters: dict[str, Any] = {}
        for name, spec in template.get("Parameters", {}).items():
            raw = given.pop(name, spec.get("Default"))
            if raw is None:
                raise ValueError(f"parameter {name} has no default and no value was given")
            raw = str(raw)
            self.parameters[name] = raw.split(",") if spec["Type"] == "CommaDelimitedList" else raw
        if given:
            raise ValueError(f"unknown parameters {sorted(given)}")
        self._conditions: dict[str, bool] = {}

    @property
    def resources(self) -> dict[str, Any]:
        return dict(self.template["Resources"])

    def resource(self, name: str) -> dict[str, Any]:
        res = self.template["Resources"][name]
        assert isinstance(res, dict)
        return res

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            self._conditions[name] = bool(self.resolve(self.template["Conditions"][name]))
        return self._conditions[name]

    def check_rules(self) -> list[str]:
        """The AssertDescription of every template rule the parameters break (CloudFormation refuses them)."""
        broken = []
        for rule in self.template.get("Rules", {}).values():
            if "RuleCondition" in rule and not self.resolve(rule["RuleCondition"]):
                continue
            for assertion in rule["Assertions"]:
                if not self.resolve(assertion["Assert"]):
                    broken.append(str(assertion.get("AssertDescription", "")))
        return broken

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in PSEUDO:
            return PSEUDO[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.template["Resources"]:
            return f"<{name}>"
        raise KeyError(f"!Ref {name}: no such parameter or resource")

    def _sub(self, text: str, variables: Mapping[str, Any]) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                value = variables[name]
            elif "." in name and name.split(".", 1)[0] in self.template["Resources"]:
                value = f"<{name}>"
            else:
                value = self._ref(name)
            if not isinstance(value, str):
                raise TypeError(f"${{{name}}} in Fn::Sub is not a string: {value!r}")
            return value

        return re.sub(r"\$\{([^}]+)\}", one, text)

    def resolve(self, node: Any) -> Any:
        """``node`` with every intrinsic function evaluated (resources as placeholders, NoValue dropped)."""
        if isinstance(node, list):
            items = [self.resolve(x) for x in node]
            return [x for x in items if x is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            key, arg = next(iter(node.items()))
            if key == "Ref":
                return self._ref(arg)
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::GetAtt":
                return f"<{arg[0]}.{arg[1]}>"
            if key == "Fn::Sub":
                if isinstance(arg, str):
                    return self._sub(arg, {})
                text, variables = arg
                return self._sub(text, {k: self.resolve(v) for k, v in variables.items()})
            if key == "Fn::Join":
                delimiter, items = arg
                return delimiter.join(self.resolve(items))
            if key == "Fn::Split":
                delimiter, text = arg
                return self.resolve(text).split(delimiter)
            if key == "Fn::If":
                name, then, otherwise = arg
                return self.resolve(then if self.condition(name) else otherwise)
            if key == "Fn::Equals":
                left, right = (self.resolve(x) for x in arg)
                return left == right
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Fn::And":
                return all(self.resolve(x) for x in arg)
            if key == "Fn::Or":
                return any(self.resolve(x) for x in arg)
            if key == "Fn::Contains":
                haystack, needle = (self.resolve(x) for x in arg)
                return needle in haystack
            if key.startswith("Fn::"):
                raise NotImplementedError(f"{key} is not supported by tests/deploy/cfn.py")
        out = {k: self.resolve(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not NO_VALUE}

"""Dataset cards: what a dataset *is*, independent of where its pixels live.

A card carries everything a method needs besides pixels -- class names (with
the list they follow), prompt templates per paper protocol, per-class
attributes for visual reprogramming, the task type and the default metric --
and a :class:`SourceSpec` saying how to read the images. Cards are validated
by pydantic, so a typo in a card fails when the registry is built, not in the
middle of a sweep.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Task = Literal["multiclass", "binary", "multilabel"]
Metric = Literal["accuracy", "auc"]
SourceKind = Literal["synthetic", "torchvision", "imagefolder", "manifest", "npz"]


class SourceSpec(BaseModel):
    """How to read a dataset's images; ``options`` are passed to the source's constructor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: SourceKind
    options: dict[str, Any] = Field(default_factory=dict)
    obtain: str = Field(description="How a user gets the data onto disk, and the layout expected there.")


ATTRIBUTE_KINDS = ("positive", "discriminative", "confusion")


class ClassAttributes(BaseModel):
    """Attribute sentences of one class (AttrVR / BioMedVR style)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    positive: list[str] = Field(default_factory=list, description="descriptive traits (AttrVR's descriptive set)")
    discriminative: list[str] = Field(default_factory=list,
                                      description="what tells it apart from the other classes (AttrVR)")
    confusion: list[str] = Field(default_factory=list,
                                 description="confusion-aware negatives: how its look-alikes appear (BioMedVR eq. 10)")


class DescriptionFile(BaseModel):
    """A per-class description file (``{"class": ["sentence", ...]}``); see :mod:`datasets.descriptions`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = Field(description="JSON file, relative to the data root (or absolute)")
    keys: dict[str, str] = Field(default_factory=dict, description="card class -> key in the file, where names "
                                                                   "differ by more than case and underscores")
    obtain: str = Field("", description="where the file comes from, shown when it is missing")


class DatasetCard(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    display_name: str
    classes: list[str]
    class_source: str = Field(description="Which published list the class names follow, e.g. CoOp's split file.")
    templates: dict[str, list[str]] = Field(description="Prompt templates per protocol; 'default' is required.")
    negative_templates: list[str] = Field(
        default_factory=list, description="multi-label tasks: how an image without the label is described "
                                          "('a chest X-ray showing no {}.'); each label's zero-shot probability is "
                                          "the softmax over its positive and negative prompt")
    attributes: dict[str, ClassAttributes] = Field(default_factory=dict)
    descriptions: DescriptionFile | None = Field(
        None, description="a class-description file whose sentences replace attributes.<class>.positive for "
                          "`descriptions: ensemble`; a bare string is the file")
    attribute_files: dict[Literal[ATTRIBUTE_KINDS], DescriptionFile] = Field(
        default_factory=dict, description="per kind (positive, discriminative, confusion) a {class: [sentence]} "
                                          "JSON file (AttrVR's layout) replacing that kind of `attributes`")
    modality: str
    task: Task = "multiclass"
    metric: Metric = "accuracy"
    splits: dict[str, str] = Field(description="Split name -> what it is (size, provenance).")
    source: SourceSpec
    papers: list[str] = Field(default_factory=list, description="Paper protocols that use this dataset.")
    notes: str = ""

    @field_validator("classes")
    @classmethod
    def _classes_unique(cls, classes: list[str]) -> list[str]:
        if not classes:
            raise ValueError("a card needs at least one class")
        dupes = sorted({c for c in classes if classes.count(c) > 1})
        if dupes:
            raise ValueError(f"duplicate class names: {dupes}")
        return classes

    @field_validator("templates")
    @classmethod
    def _templates_have_slot(cls, templates: dict[str, list[str]]) -> dict[str, list[str]]:
        if "default" not in templates:
            raise ValueError("templates need a 'default' protocol")
        for protocol, items in templates.items():
            if not items:
                raise ValueError(f"templates[{protocol!r}] is empty")
            for t in items:
                if t.count("{}") != 1:
                    raise ValueError(
                        f"template {t!r} (protocol {protocol!r}) must contain exactly one '{{}}' slot for the class name"
                    )
        return templates

    @field_validator("descriptions", mode="before")
    @classmethod
    def _description_file(cls, value):
        return {"file": value} if isinstance(value, str) else value

    @field_validator("attribute_files", mode="before")
    @classmethod
    def _attribute_files(cls, value):
        return {k: {"file": v} if isinstance(v, str) else v for k, v in (value or {}).items()}

    @model_validator(mode="after")
    def _attributes_name_known_classes(self) -> "DatasetCard":
        unknown = sorted(set(self.attributes) - set(self.classes))
        if unknown:
            raise ValueError(f"attributes given for classes not in the class list: {unknown}")
        unknown = sorted(set(self.descriptions.keys) - set(self.classes)) if self.descriptions else []
        if unknown:
            raise ValueError(f"descriptions.keys given for classes not in the class list: {unknown}")
        if self.task == "multilabel" and not self.negative_templates:
            raise ValueError("a multi-label card needs negative_templates (e.g. ['a photo with no {}.']): each "
                             "label's zero-shot probability compares its positive and its negative prompt")
        bad = [t for t in self.negative_templates if t.count("{}") != 1]
        if bad:
            raise ValueError(f"negative templates {bad} must contain exactly one '{{}}' slot for the label name")
        if self.task == "binary" and len(self.classes) != 2:
            raise ValueError(f"a binary task needs exactly two classes, got {len(self.classes)}")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def prompts(self, protocol: str = "default") -> list[str]:
        """The templates of a protocol; unknown protocols list the known ones."""
        if protocol not in self.templates:
            raise KeyError(f"{self.name}: no templates for protocol {protocol!r}; known: {sorted(self.templates)}")
        return self.templates[protocol]

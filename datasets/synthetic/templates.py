"""Zero-shot prompt templates of the synthetic family.

They echo the caption styles of the tiny CLIP's pre-training corpus the way
CLIP's ImageNet templates echo web alt-text: close, never identical.
"""

PHOTO_TEMPLATES = ("a photo of a {}.", "a {} on a background.", "a picture of a {}.")
SCAN_TEMPLATES = ("a grayscale scan of a {}.", "a faint {} in a noisy scan.", "a scan showing a {}.")
LESION_TEMPLATES = ("a {} grayscale scan.", "a scan showing a {}.")

TEMPLATES: dict[str, tuple[str, ...]] = {
    "synth-shapes": PHOTO_TEMPLATES,
    "synth-patterned-shapes": PHOTO_TEMPLATES,
    "synth-scans": SCAN_TEMPLATES,
    "synth-lesions": LESION_TEMPLATES,
    "synth-findings": SCAN_TEMPLATES,
}
#: The multi-label member's negative prompts (each label: positive vs negative, CheXzero-style).
NEGATIVE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "synth-findings": ("a normal grayscale scan without a {}.", "an empty scan with no {}."),
}

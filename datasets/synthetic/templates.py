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
}

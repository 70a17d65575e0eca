"""Adaptation against a black-box foundation model: VALIANT's prompt decoder trained by zero-order optimisation."""

"""How a run is started from the admin: queue, priority, delay, labels."""

from __future__ import annotations

from typing import Any

from django import forms


class StartOptionsForm(forms.Form):
    queue = forms.CharField(max_length=100, required=False)
    priority = forms.IntegerField(min_value=-100, max_value=100, required=False)
    delay = forms.FloatField(min_value=0, required=False, help_text="seconds before it may start")
    labels = forms.CharField(
        required=False, help_text="key:value pairs, one per line (e.g. tenant:acme)",
        widget=forms.Textarea(attrs={"rows": 2, "cols": 40}))

    def clean_labels(self) -> dict[str, str]:
        labels: dict[str, str] = {}
        for line in (self.cleaned_data.get("labels") or "").splitlines():
            if not line.strip():
                continue
            key, sep, value = line.strip().partition(":")
            if not sep or not key.strip():
                raise forms.ValidationError(f"{line.strip()!r} is not key:value.")
            labels[key.strip()] = value.strip()
        return labels

    def start_options(self) -> dict[str, Any]:
        """The options for ``api.using(...)`` (only those given)."""
        data = self.cleaned_data
        options: dict[str, Any] = {}
        if data.get("queue"):
            options["queue"] = data["queue"]
        if data.get("priority") is not None:
            options["priority"] = data["priority"]
        if data.get("delay"):
            options["delay"] = data["delay"]
        if data.get("labels"):
            options["labels"] = data["labels"]
        return options

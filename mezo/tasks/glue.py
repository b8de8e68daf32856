"""Single-sentence and sentence-pair GLUE tasks with the MeZO (large-model) templates."""
from __future__ import annotations

from mezo.tasks.causal import TemplateTask
from mezo.tasks.templates import CAUSAL


class SST2(TemplateTask):
    """SST-2, MeZO's SST2Template: "<sentence> It was" + " terrible" | " great"."""
    name = "SST2"
    hf_path, hf_config = "glue", "sst2"
    data_path = "glue/sst2"
    uses_text_column = True
    verbalizer = tuple(" " + w for w in CAUSAL["SST2"].words)   # label 0 negative, 1 positive

    def template_row(self, row: dict) -> dict:
        return {"sentence": row[self.text_column or "sentence"]}

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.text_column or "sentence",)

    def check_row(self, row: dict) -> str | None:
        if self.text_column and self.text_column not in row:
            return f"--text_column {self.text_column}: no such column (the row has {', '.join(map(repr, row))})"
        problem = super().check_row(row)
        if problem and "sentence" not in row and not self.text_column:
            problem += "; --text_column names the column that holds the text"
        return problem

"""Single-sentence and sentence-pair GLUE tasks with the MeZO (large-model) templates."""
from __future__ import annotations

from mezo.tasks.base import Sample, Task


class SST2(Task):
    """SST-2, MeZO's SST2Template: "<sentence> It was great|terrible"."""
    name = "SST2"
    hf_path, hf_config = "glue", "sst2"
    data_path = "glue/sst2"
    verbalizer = (" terrible", " great")   # label 0 negative, 1 positive

    def sample(self, row: dict) -> Sample:
        text = row[self.text_column or "sentence"].strip()
        return Sample(prompt=f"{text} It was", candidates=list(self.verbalizer),
                      label=int(row["label"]), data=row)

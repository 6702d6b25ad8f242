"""MMLU (Hendrycks et al., 2021): 57 subjects, 5-shot, accuracy micro-averaged over the 14,042
test questions, as in the Qwen-14B model card.

Data: `dev/{subject}_dev.csv` and `test/{subject}_test.csv`, header-less CSV rows
question,A,B,C,D,answer (the hendrycks data.tar layout); hub `cais/mmlu`, one config per subject
(answer there is an index 0-3).

Prompt (Qwen's eval/evaluate_mmlu.py, byte for byte):
    The following are multiple choice questions (with answers) about {subject}.\n\n
    Question: {q}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer: {ans}\n\n      (each shot)
    Question: {q}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:                (the query)
where {subject} is the file stem with "_" -> " ". The four continuations are " A".." D" with the
space, one token each; prompts over the model's 2048 tokens keep their last 2047 (the backend's
left truncation, see `Choice`): 373 of the 14,042 5-shot prompts are longer (up to 3,108 tokens).

Metric: `acc` micro over all questions; `<category>/acc` micro within each of the four
categories; `subject/<name>/acc`.
"""

from __future__ import annotations

from typing import Any, Mapping

from qwen_eval.errors import UserError
from qwen_eval.tasks.chat_choice import mmlu_question, mmlu_letter
from qwen_eval.tasks.multiple_choice import LETTERS, CsvLayout, MCDoc, MultipleChoiceTask

# subject -> subcategory, and category -> subcategories: the hendrycks/test categories.py mapping.
# Qwen's evaluate_mmlu.py lists anatomy under STEM; the hendrycks mapping (used here) puts it in
# "other" through the subcategory "health". Every other subject is in the same category in both.
SUBJECTS: dict[str, str] = {
    "abstract_algebra": "math",
    "anatomy": "health",
    "astronomy": "physics",
    "business_ethics": "business",
    "clinical_knowledge": "health",
    "college_biology": "biology",
    "college_chemistry": "chemistry",
    "college_computer_science": "computer science",
    "college_mathematics": "math",
    "college_medicine": "health",
    "college_physics": "physics",
    "computer_security": "computer science",
    "conceptual_physics": "physics",
    "econometrics": "economics",
    "electrical_engineering": "engineering",
    "elementary_mathematics": "math",
    "formal_logic": "philosophy",
    "global_facts": "other",
    "high_school_biology": "biology",
    "high_school_chemistry": "chemistry",
    "high_school_computer_science": "computer science",
    "high_school_european_history": "history",
    "high_school_geography": "geography",
    "high_school_government_and_politics": "politics",
    "high_school_macroeconomics": "economics",
    "high_school_mathematics": "math",
    "high_school_microeconomics": "economics",
    "high_school_physics": "physics",
    "high_school_psychology": "psychology",
    "high_school_statistics": "math",
    "high_school_us_history": "history",
    "high_school_world_history": "history",
    "human_aging": "health",
    "human_sexuality": "culture",
    "international_law": "law",
    "jurisprudence": "law",
    "logical_fallacies": "philosophy",
    "machine_learning": "computer science",
    "management": "business",
    "marketing": "business",
    "medical_genetics": "health",
    "miscellaneous": "other",
    "moral_disputes": "philosophy",
    "moral_scenarios": "philosophy",
    "nutrition": "health",
    "philosophy": "philosophy",
    "prehistory": "history",
    "professional_accounting": "other",
    "professional_law": "law",
    "professional_medicine": "health",
    "professional_psychology": "psychology",
    "public_relations": "politics",
    "security_studies": "politics",
    "sociology": "culture",
    "us_foreign_policy": "politics",
    "virology": "health",
    "world_religions": "philosophy",
}

CATEGORIES: dict[str, tuple[str, ...]] = {
    "stem": ("physics", "chemistry", "biology", "computer science", "math", "engineering"),
    "humanities": ("history", "philosophy", "law"),
    "social_sciences": ("politics", "culture", "economics", "geography", "psychology"),
    "other": ("other", "business", "health"),
}


def category_of(subject: str) -> str:
    (category,) = [c for c, subcategories in CATEGORIES.items() if SUBJECTS[subject] in subcategories]
    return category


class MMLU(MultipleChoiceTask):
    name = "mmlu"
    headline = "acc"
    model_card_column = "MMLU"
    version = "1"

    subjects = SUBJECTS
    # Qwen: pd.read_csv(path, names=["question", "A", "B", "C", "D", "answer"])
    layout = CsvLayout(question="question", answer="answer", names=("question", "A", "B", "C", "D", "answer"))
    file_pattern = "{split}/{subject}_{split}.csv"
    eval_split = "test"
    hub_id = "cais/mmlu"
    description = "The following are multiple choice questions (with answers) about {subject}.\n\n"
    # The query ends "Answer:" with no trailing space: the shots' answers and the scored
    # continuations carry it (" A").
    question_format = "Question: {question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:"
    target_delimiter = " "
    average = "micro"
    groups = {category: [s for s in SUBJECTS if category_of(s) == category] for category in CATEGORIES}

    def chat_question(self, doc: MCDoc) -> str:
        return mmlu_question(doc.question.text, doc.question.choices)

    def chat_letter(self, reply: str, doc: MCDoc) -> str:
        return mmlu_letter(reply, doc.question.choices)

    def hub_records(self, rows: list[dict[str, Any]], origin: str) -> list[Mapping[str, Any]]:
        """cais/mmlu rows {question, subject, choices: [4], answer: 0-3} in the CSV's columns."""
        records = []
        for row, item in enumerate(rows):
            choices, answer = item.get("choices"), item.get("answer")
            if not isinstance(choices, (list, tuple)) or len(choices) != 4 or answer not in range(4):
                raise UserError(f"{origin}: row {row} is not a four-choice question with an answer index 0-3; "
                                f"use data.path=DIR with the upstream files")
            records.append({"question": item.get("question"), **dict(zip(LETTERS, choices)),
                            "answer": LETTERS[answer]})
        return records

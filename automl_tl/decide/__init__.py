"""decide: what to do with the data, on evidence. The profile (size, similarity to the source
domain by FAISS and BatchNorm drift, stage probes) and its verdicts, source banks, the plan
(case, strategy, cut) with a written reason for every decision, and the frozen choice: a
head measured on every cached view, compared on the validation split.

May import: core, data, features, train (a candidate is measured by training it).
"""

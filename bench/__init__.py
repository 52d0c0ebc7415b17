"""Benchmarks and timing helpers, apart from the product modules: each `specvoice bench X` lives here.

llm (HF vs our engine), llm_batch (batched vs sequential replies), gpu + gpu_report + gpu_timing (GPU step
times), voice (+ voice_questions, voice_runs, voice_report: turn taking), serve + abuse (concurrent
sessions), tools + tools_score (spoken commands -> tool calls). Data files are in bench/data/.
"""

"""The one client for OpenAI-compatible servers, shared by corpus generation (data_gen: textbooks,
exercises, filter labels) and evaluation (phi1.evals: API generation, the graded bench's grader):
concurrency, rate limits, retries, response cache, budget and cost. It lives under phi1 so that
data_gen may use it while phi1 never imports data_gen."""

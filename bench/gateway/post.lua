-- wrk: POST an OpenAI chat completion; the Authorization header comes from the environment.
wrk.method = "POST"
wrk.body = '{"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello in one short sentence, please."}], "max_tokens": 64}'
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_KEY")
if key and key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end

done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.1f p50=%.3f p90=%.3f p99=%.3f errors=%d non2xx=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end

"""Resilience: process retry and restart policies, timeouts, circuit breakers with fallback tools,
the watchdog, degraded mode, `health` and chaos (fault injection). See docs/resilience.md."""

from llmunix.resilience.breakers import BreakerInfo, CircuitBreaker
from llmunix.resilience.chaos import ChaosSpec
from llmunix.resilience.health import HealthCheck, HealthReport
from llmunix.resilience.restart import RestartPolicy, backoff_policy, parse_backoff
from llmunix.retry import RetryPolicy

__all__ = ["BreakerInfo", "ChaosSpec", "CircuitBreaker", "HealthCheck", "HealthReport", "RestartPolicy",
           "RetryPolicy", "backoff_policy", "parse_backoff"]

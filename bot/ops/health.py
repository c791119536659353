"""Health, readiness and metrics on $PORT: /healthz (liveness), /readyz (readiness), /metrics (Prometheus).

What they read: the database (a fresh connection, a real query, in time), the
answerer's model (loading, loaded, or fallen back to retrieval-only), the
queues, the adapter in service, and each platform's state as the serving
process (bot.ops.serve) records it. The routes answer in every case, so the
process tells the operator what it serves even with no platform set.
"""
from __future__ import annotations

import asyncio
import time

from bot import store

DB_CHECK_TIMEOUT_S = 2.0  # a readiness probe must answer well within a load balancer's few seconds


class Health:
    """What /healthz, /readyz and /metrics read: the database, the answerer's model, the platforms.

    `platforms` is the dict the serving loop (bot.ops.serve) fills in as each platform starts
    (and when one stops): `{"slack": "off" | "http :3000/slack/events"
    | "socket mode" | "stopped: ...", "discord": ...}`."""

    def __init__(self, commands, platforms: dict, db_path, adapters_dir=None):
        self.commands, self.platforms = commands, platforms
        self.db_path, self.adapters_dir = db_path, adapters_dir
        self._registry = None

    def _generator(self):
        # Answerer.generator() holds its lock while the model loads: ask only once loaded (it returns at once).
        answerer = self.commands.answerer
        return answerer.generator() if answerer.generator_loaded else None

    def live(self) -> dict:
        """The in-process figures: model state, queues, adapter in service (no I/O but one small file read).

        `queue_depth` is what waits for the model worker; `in_flight` every question
        between `ask` and its recorded answer (retrieving, waiting, generating)."""
        from bot.llm.hotswap import read_pointer

        answerer = self.commands.answerer
        gen = self._generator()
        if gen is not None:
            model_state, model = "loaded", "loaded"
        elif answerer.unavailable_reason is not None:
            model_state, model = "retrieval-only", answerer.unavailable_reason
        else:
            model_state, model = "loading", "loading"
        return {"model_state": model_state, "model": model, "model_loaded": gen is not None,
                "queue_depth": gen.depth if gen is not None else 0, "in_flight": answerer.queue_depth(),
                "adapter": {"in_service": read_pointer(self.adapters_dir) if self.adapters_dir else None,
                            "serving": gen.active_adapter if gen is not None else None}}

    async def database(self) -> dict:
        """`{"ok": True, "ms"}` when a fresh connection answers a real query in time, else `{"ok": False, "error"}`."""
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.to_thread(store.ping, self.db_path, DB_CHECK_TIMEOUT_S),
                                   DB_CHECK_TIMEOUT_S + 0.5)
        except asyncio.TimeoutError:
            return {"ok": False, "error": f"no answer within {DB_CHECK_TIMEOUT_S:.0f} s"}
        except Exception as e:  # noqa: BLE001 (missing, unreadable, not a database, locked)
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}
        return {"ok": True, "ms": round((time.perf_counter() - t0) * 1000, 2)}

    async def health(self) -> dict:
        """Liveness and readiness in one report; `ready` is what /readyz answers 200 or 503 on."""
        database, live = await self.database(), self.live()
        return {"ok": True,  # the process answers: liveness
                # Ready once the database answers and the model is loaded or has definitively fallen
                # back to retrieval-only; while it loads, questions would wait behind it.
                "ready": database["ok"] and live["model_state"] != "loading",
                "database": database, "model": live["model"], "model_state": live["model_state"],
                "queue_depth": live["queue_depth"], "in_flight": live["in_flight"], "adapter": live["adapter"],
                "slack": self.platforms.get("slack", "off"), "discord": self.platforms.get("discord", "off"),
                "platforms": dict(self.platforms)}

    @property
    def registry(self):
        if self._registry is None:  # prometheus_client is imported on first scrape, not with bot.ops.health
            from bot.ops import metrics

            self._registry = metrics.registry(self.commands.db, self.live)
        return self._registry

    def routes(self) -> list:
        """GET /healthz (always 200 while the process lives; `?ready=1`: as /readyz), /readyz (200 or 503), /metrics."""
        from aiohttp import web

        async def healthz(request):
            report = await self.health()
            strict = request.query.get("ready", "") not in ("", "0", "false")
            return web.json_response(report, status=503 if strict and not report["ready"] else 200)

        async def readyz(request):
            report = await self.health()
            return web.json_response(report, status=200 if report["ready"] else 503)

        async def metrics_view(request):
            from bot.ops import metrics

            body = await asyncio.to_thread(metrics.exposition, self.registry)  # SQL: off the event loop
            return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

        return [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics_view)]

"""Realistic sample users for the demo: every case the inactive-accounts policy distinguishes,
and a few who revoked analytics consent (the consent-deletion flows erase them at third parties)."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from lifecycle.clients.storage import ObjectStorage
from lifecycle.db.schema import features, scoreboard_entries, users

FIRST = [
    "Ada",
    "Grace",
    "Linus",
    "Margaret",
    "Ken",
    "Barbara",
    "Dennis",
    "Frances",
    "Alan",
    "Edsger",
]
LAST = ["Lovelace", "Hopper", "Torvalds", "Hamilton", "Thompson", "Liskov", "Ritchie", "Allen"]

# (label, how many, last visit days ago, extra columns as a function of now)
SCENARIOS: list[tuple[str, int, int, dict[str, Any]]] = [
    ("active", 12, 3, {}),
    ("inactive, never warned", 6, 75, {}),
    ("long inactive, never warned", 2, 400, {}),
    ("warned 35 days ago", 4, 100, {"warned_days_ago": 35}),
    ("warned 10 days ago", 3, 75, {"warned_days_ago": 10}),
    ("came back after the warning", 2, 5, {"warned_days_ago": 40}),
    ("paying, inactive", 3, 120, {"subscription_status": "active"}),
    ("lifetime deal, inactive", 2, 200, {"lifetime_deal": True}),
    ("free trial running, inactive", 2, 70, {"trial_days_left": 5}),
    ("active, revoked analytics consent", 3, 1, {"revoked_minutes_ago": 30}),
]


def seed(engine: sa.Engine, storage: ObjectStorage, *, now: datetime, seed: int = 7) -> int:
    """Insert the sample users with files, features and scores; returns how many users."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _label, count, visited_days_ago, extra in SCENARIOS:
        for _ in range(count):
            user_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            first, last = rng.choice(FIRST), rng.choice(LAST)
            last_visit = now - timedelta(days=visited_days_ago, hours=rng.randint(0, 12))
            row: dict[str, Any] = {
                "id": user_id,
                "email": f"{first}.{last}.{user_id[:6]}@example.com".lower(),
                "name": f"{first} {last}",
                "created_at": last_visit - timedelta(days=rng.randint(10, 300)),
                "last_visit_at": last_visit,
                "lifetime_deal": extra.get("lifetime_deal", False),
                "subscription_status": extra.get("subscription_status", "none"),
                "free_trial_ends_at": (
                    now + timedelta(days=extra["trial_days_left"])
                    if "trial_days_left" in extra
                    else None
                ),
                "deletion_warning_sent_at": (
                    now - timedelta(days=extra["warned_days_ago"])
                    if "warned_days_ago" in extra
                    else None
                ),
                "analytics_consent": "revoked_minutes_ago" not in extra,
                "analytics_consent_revoked_at": (
                    now - timedelta(minutes=extra["revoked_minutes_ago"])
                    if "revoked_minutes_ago" in extra
                    else None
                ),
            }
            rows.append(row)
    rows[0]["name"] = "Robert'); <b>Tables</b>"  # HTML in a name must arrive escaped
    with engine.begin() as conn:
        conn.execute(sa.insert(users), rows)
        conn.execute(
            sa.insert(features),
            [{"title": f"Idea {i}", "proposed_by": row["id"]} for i, row in enumerate(rows[::3])],
        )
        conn.execute(
            sa.insert(scoreboard_entries),
            [
                {"period": period, "user_id": row["id"], "score": rng.randint(1, 500)}
                for row in rows[::2]
                for period in ("week", "month")
            ],
        )
    for row in rows:
        for name in ("avatar.png", "notes/1.md", "notes/2.md"):
            storage.put(f"users/{row['id']}/{name}", f"sample {name}".encode())
    return len(rows)

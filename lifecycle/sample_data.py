"""Realistic sample data for the demo: every case the inactive-accounts policy distinguishes,
a few users who revoked analytics consent (erased at third parties by consent deletion),
temporary attributes and index entries with the guide's lifetimes, and cart activity."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from lifecycle.clients.storage import ObjectStorage
from lifecycle.db.schema import (
    attribute_index,
    attributes,
    cart_activity,
    features,
    scoreboard_entries,
    users,
)
from lifecycle.processes.ttl_purge.rules import ATTRIBUTE_LIFETIMES, INDEX_TTL_BUFFER

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
    for row in rows:  # everyone above signed up long ago and activated
        row["username"] = row["email"].split("@")[0]
        row["activation_status"] = "DONE"
    rows.extend(_new_signups(rng, now))
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


#: Users who signed up minutes ago: activation-mail sends them their link.
NEW_SIGNUPS = 3


def _new_signups(rng: random.Random, now: datetime) -> list[dict[str, Any]]:
    rows = []
    for minutes_ago in range(NEW_SIGNUPS):
        user_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        first, last = rng.choice(FIRST), rng.choice(LAST)
        created = now - timedelta(minutes=minutes_ago + 1)
        rows.append(
            {
                "id": user_id,
                "email": f"{first}.{last}.{user_id[:6]}@example.com".lower(),
                "name": f"{first} <{last}>",  # angle brackets: escaped in the HTML part
                "username": f"{first}_{last}_{user_id[:4]}".lower(),
                "created_at": created,
                "last_visit_at": created,
                "activation_status": "NONE",
                "lifetime_deal": False,
                "subscription_status": "none",
                "free_trial_ends_at": None,
                "deletion_warning_sent_at": None,
                "analytics_consent": True,
                "analytics_consent_revoked_at": None,
            }
        )
    return rows


# --- TTL purge and abandoned carts ----------------------------------------------------------


def seed_ttl(engine: sa.Engine, *, now: datetime, seed: int = 9) -> dict[str, int]:
    """Attributes with the guide's lifetimes (some expired), index entries (some orphaned),
    and cart activity (abandoned, abandoned but empty or anonymous, still active)."""
    rng = random.Random(seed)
    epoch = int(now.timestamp())
    attributes_rows: list[dict[str, Any]] = []
    index_rows: list[dict[str, Any]] = []
    for bucket, lifetime in ATTRIBUTE_LIFETIMES.items():
        seconds = int(lifetime.total_seconds())
        for number in range(40):
            actor = f"actor-{rng.randrange(12):02}"
            created = epoch - rng.randrange(2 * seconds)  # about half are past their lifetime
            name = uuid.UUID(int=rng.getrandbits(128), version=4).hex
            attributes_rows.append(
                {
                    "actor_id": actor,
                    "bucket": bucket,
                    "name": name,
                    "data": '{"scope": "demo"}',
                    "timestamp": datetime.fromtimestamp(created, UTC),
                    "ttl_timestamp": created + seconds,
                }
            )
            if bucket.endswith("tokens"):
                index_rows.append(
                    {
                        "index_name": bucket,
                        "index_key": f"{bucket}-{number}",
                        "actor_id": actor,
                        "bucket": bucket,
                        # every fifth entry points at an attribute that is already gone
                        "name": name if number % 5 else f"revoked-{name}",
                        "ttl_timestamp": created + seconds + int(INDEX_TTL_BUFFER.total_seconds()),
                    }
                )
    attributes_rows += [  # permanent: no expiry
        {
            "actor_id": f"actor-{n:02}",
            "bucket": "profile",
            "name": "display_name",
            "data": "x",
            "timestamp": now,
            "ttl_timestamp": None,
        }
        for n in range(12)
    ]
    carts = _sample_carts(rng, epoch)
    with engine.begin() as conn:
        conn.execute(sa.insert(attributes), attributes_rows)
        conn.execute(sa.insert(attribute_index), index_rows)
        conn.execute(sa.insert(cart_activity), carts)
    return {"attributes": len(attributes_rows), "index": len(index_rows), "carts": len(carts)}


def _sample_carts(rng: random.Random, epoch: int) -> list[dict[str, Any]]:
    products = [f"SKU-{n:04}" for n in range(1, 40)]
    carts: list[dict[str, Any]] = []
    for number in range(24):
        kind = number % 4  # 0, 1: abandoned; 2: abandoned, anonymous or empty; 3: still active
        expires = epoch + (rng.randrange(600, 86_400) if kind == 3 else -rng.randrange(60, 86_400))
        carts.append(
            {
                "cart_id": f"cart-{number:04}",
                "customer_id": None if kind == 2 and number % 8 == 2 else f"customer-{number:04}",
                "product_ids": [] if kind == 2 and number % 8 == 6 else rng.sample(products, 3),
                "expires_at": expires,
            }
        )
    return carts

"""Which AWS accounts to audit, and with which credentials.

Three ways, from ``aws.accounts``:
- empty: the default credentials' own account (its id read once from STS);
- a list of roles: each assumed through STS;
- ``{organization: {role_name, external_id, exclude}}``: every ``ACTIVE`` account of the AWS
  Organization, from ``organizations:ListAccounts`` (paged, 20 a page) called with the default
  credentials of the management account or of a delegated administrator. The role
  ``role_name`` is assumed in each member account; the account guardian's own credentials
  belong to is audited with those credentials (a StackSet does not create the role in the
  management account). The listing is kept for ``ORGANIZATION_TTL``, so a new account is
  audited within the hour and a cycle costs no Organizations call.

Assumed sessions are cached by ``AwsClients`` and assumed again before they expire. An account
whose role cannot be assumed is one ``UnitError`` (region ``*``) and is skipped; the others go on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from guardian.config import AwsAccount, AwsConfig, AwsOrganizationAccounts
from guardian.providers import UnitError
from guardian.providers.aws.clients import AccountAccess, AwsClients, account_from_role_arn

__all__ = ["ORGANIZATION_TTL_S", "AccountDirectory", "OrgAccount"]

log = structlog.get_logger(__name__)

ORGANIZATION_TTL_S = 3600.0
# AssumeRole calls in flight at once when many member accounts are entered for the first time.
ASSUME_WORKERS = 8

ErrorFactory = Callable[[BaseException, str, str, str], UnitError]


@dataclass(frozen=True)
class OrgAccount:
    account_id: str
    name: str
    status: str


def _partition(arn: str) -> str:
    """``aws``, ``aws-cn`` or ``aws-us-gov``: role ARNs must name the caller's partition."""
    parts = arn.split(":")
    return parts[1] if len(parts) > 1 and parts[1] else "aws"


def list_organization_accounts(clients: AwsClients) -> list[OrgAccount]:
    """Every account of the Organization, all pages (ListAccounts answers 20 at most)."""
    organizations = clients.organizations()
    found: list[OrgAccount] = []
    for page in organizations.get_paginator("list_accounts").paginate():
        for account in page.get("Accounts", []):
            # ``State`` replaces ``Status`` in the current API; either says ACTIVE.
            status = str(account.get("State") or account.get("Status") or "ACTIVE")
            found.append(OrgAccount(account["Id"], account.get("Name", ""), status))
    return found


class AccountDirectory:
    """The accounts of one provider, resolved to credentials; thread-safe."""

    def __init__(self, config: AwsConfig, clients: AwsClients, unit_error: ErrorFactory) -> None:
        self._config = config
        self._clients = clients
        self._unit_error = unit_error
        self._lock = threading.Lock()
        # Unit threads that meet an account not entered yet resolve at once: one does the work.
        self._resolving = threading.Lock()
        self._listed: tuple[float, list[AwsAccount], str] | None = None  # when, roles, own id

    def resolve(self, errors: list[UnitError]) -> list[AccountAccess]:
        """The accounts to audit now, each entered; failures are appended to ``errors``."""
        with self._resolving:
            return self._resolve(errors)

    def _resolve(self, errors: list[UnitError]) -> list[AccountAccess]:
        accounts = self._config.accounts
        if isinstance(accounts, AwsOrganizationAccounts):
            return self._organization(accounts, errors)
        if not accounts:
            try:
                return [self._clients.default_account()]
            except Exception as exc:
                errors.append(self._unit_error(exc, "default", "*", "sts:GetCallerIdentity"))
                return []
        return self._assume_all(accounts, errors)

    def _assume_all(
        self, accounts: list[AwsAccount], errors: list[UnitError]
    ) -> list[AccountAccess]:
        def enter(account: AwsAccount) -> AccountAccess | UnitError:
            try:
                return self._clients.role_account(account)
            except Exception as exc:
                account_id = account_from_role_arn(account.role_arn)
                return self._unit_error(exc, account_id, "*", "sts:AssumeRole")

        # Entering hundreds of accounts one after the other would take a minute; AssumeRole is
        # called only when a session is missing or near its expiry, so a warm cycle makes none.
        with ThreadPoolExecutor(
            max_workers=max(1, min(ASSUME_WORKERS, len(accounts))),
            thread_name_prefix="guardian-sts",
        ) as pool:
            results = list(pool.map(enter, accounts))
        entered = [r for r in results if isinstance(r, AccountAccess)]
        errors.extend(r for r in results if isinstance(r, UnitError))
        return entered

    def _organization(
        self, accounts: AwsOrganizationAccounts, errors: list[UnitError]
    ) -> list[AccountAccess]:
        try:
            roles, own = self._organization_roles(accounts)
        except Exception as exc:
            errors.append(self._unit_error(exc, "organization", "*", "organizations:ListAccounts"))
            return []
        found: list[AccountAccess] = []
        if own not in accounts.organization.exclude:
            try:
                found.append(self._clients.default_account())
            except Exception as exc:
                errors.append(self._unit_error(exc, own, "*", "sts:GetCallerIdentity"))
        return found + self._assume_all(roles, errors)

    def _organization_roles(
        self, accounts: AwsOrganizationAccounts
    ) -> tuple[list[AwsAccount], str]:
        with self._lock:
            listed = self._listed
            if listed is not None and time.monotonic() - listed[0] < ORGANIZATION_TTL_S:
                return listed[1], listed[2]
        org = accounts.organization
        arn, own = self._clients.default_identity()
        members = list_organization_accounts(self._clients)
        excluded = set(org.exclude)
        roles = [
            AwsAccount(
                role_arn=f"arn:{_partition(arn)}:iam::{member.account_id}:role/{org.role_name}",
                external_id=org.external_id,
                name=member.name or None,
            )
            for member in members
            if member.status == "ACTIVE"
            and member.account_id != own
            and member.account_id not in excluded
        ]
        log.info(
            "aws_organization_listed",
            accounts=len(members),
            audited=len(roles) + (own not in excluded),
            excluded=len(excluded),
            inactive=sum(1 for m in members if m.status != "ACTIVE"),
        )
        with self._lock:
            self._listed = (time.monotonic(), roles, own)
        return roles, own

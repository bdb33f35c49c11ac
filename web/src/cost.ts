// Money and usage as the console shows them: exact decimals from loom.cost.v1.Money (units and nanos), never
// through a float.

/** The Money fields the console reads (loom.cost.v1.Money). */
export interface MoneyLike { currencyCode: string; units: bigint; nanos: number }

/** fmtMoney renders an amount as "0.000123 USD" (up to 9 decimals, trailing zeros dropped); "" when unset. */
export function fmtMoney(m?: MoneyLike): string {
  if (!m) return "";
  const neg = m.units < 0n || m.nanos < 0;
  const units = m.units < 0n ? -m.units : m.units;
  const nanos = Math.abs(m.nanos);
  const frac = nanos ? "." + String(nanos).padStart(9, "0").replace(/0+$/, "") : "";
  return `${neg ? "-" : ""}${units}${frac} ${m.currencyCode}`.trim();
}

/** The usage fields the console reads (loom.agent.v1.Usage and loom.orchestrator.v1.Usage). */
export interface UsageLike { inputTokens: bigint; outputTokens: bigint; cost?: MoneyLike; costUnknown: boolean }

/** fmtCost is a usage's cost, with "+ unknown" when part of it could not be priced. */
export function fmtCost(u?: UsageLike): string {
  if (!u) return "";
  const c = fmtMoney(u.cost) || "0";
  return u.costUnknown ? `${c} + unknown` : c;
}

/** fmtUsage is "usage: 12 input, 34 output tokens · cost 0.0001 USD". */
export function fmtUsage(u?: UsageLike): string {
  return `usage: ${u?.inputTokens ?? 0n} input, ${u?.outputTokens ?? 0n} output tokens · cost ${fmtCost(u)}`;
}

/**
 * parseMoney reads a decimal amount such as "0.25" or "12" (at most 9 decimals, not negative) into Money without
 * going through a float; it throws an Error naming what is wrong.
 */
export function parseMoney(text: string, currencyCode: string): MoneyLike {
  const m = /^(\d{1,18})(?:\.(\d{1,9}))?$/.exec(text.trim());
  if (!m) throw new Error("must be an amount such as 0.25 (digits, at most 9 decimals)");
  if (!/^[A-Z]{3}$/.test(currencyCode)) throw new Error("currency must be a three-letter ISO 4217 code such as USD");
  return { currencyCode, units: BigInt(m[1]), nanos: Number((m[2] ?? "").padEnd(9, "0")) };
}

/** moneyAmount writes Money's amount as parseMoney reads it ("" when unset). */
export function moneyAmount(m?: MoneyLike): string {
  return m ? fmtMoney(m).replace(/ [A-Z]*$/, "") : "";
}

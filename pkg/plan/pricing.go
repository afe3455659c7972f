package plan

import (
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
)

// Pricing is what a plan costs, as the config says (plans.<name>.pricing):
// the developer portal shows and projects a period's cost from it. It is
// not the invoice: Stripe bills from its own prices (billing.stripe_prices
// and the meter), which these should match; levy holds no amounts of
// Stripe's.
type Pricing struct {
	Currency Currency
	// Fixed is the price of one period of the plan (its quota's period, or
	// a calendar month without a quota), whatever the usage.
	Fixed Amount
	// Per1K is the price of 1,000 units beyond the included ones (payg, or
	// a tiered plan with a soft quota); units are priced one by one, at a
	// thousandth of it each, and the total is rounded once.
	Per1K Amount
}

// Amount is an exact amount of money in millionths of a currency's major
// unit: 1 USD is 1_000_000, a price of $0.0005 is 500. levy never holds
// money in a float.
type Amount int64

// AmountScale is an Amount's units per major unit of a currency.
const AmountScale = 1_000_000

// MaxAmount is the largest price ParseAmount accepts: a million major
// units. With units at most 2^40 a period, every total then fits an int64.
const MaxAmount Amount = 1_000_000 * AmountScale

// amountDecimals is how many decimals an Amount holds.
const amountDecimals = 6

// ParseAmount reads a price written as a decimal number of major units
// ("49", "49.00", "0.0005"): not negative, at most 6 decimals and at most
// MaxAmount. The text is read as written, never through a float.
func ParseAmount(s string) (Amount, error) {
	whole, frac, dot := strings.Cut(strings.TrimSpace(s), ".")
	if whole == "" || dot && frac == "" || !digits(whole) || !digits(frac) {
		return 0, fmt.Errorf("price %q: want a decimal number such as 49, 49.00 or 0.0005", s)
	}
	if len(frac) > amountDecimals {
		return 0, fmt.Errorf("price %q: at most %d decimals", s, amountDecimals)
	}
	whole = strings.TrimLeft(whole, "0")
	if len(whole) > 7 { // more than MaxAmount's 1,000,000
		return 0, fmt.Errorf("price %q: at most %s", s, MaxAmount)
	}
	w, _ := strconv.ParseInt("0"+whole, 10, 64)
	f, _ := strconv.ParseInt(frac+strings.Repeat("0", amountDecimals-len(frac)), 10, 64)
	a := Amount(w*AmountScale + f)
	if a > MaxAmount {
		return 0, fmt.Errorf("price %q: at most %s", s, MaxAmount)
	}
	return a, nil
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// String writes the amount in major units with the decimals it needs:
// "49", "49.5", "0.0005".
func (a Amount) String() string {
	s := strconv.FormatInt(int64(a)/AmountScale, 10)
	if f := int64(a) % AmountScale; f != 0 {
		s += "." + strings.TrimRight(fmt.Sprintf("%06d", f), "0")
	}
	return s
}

// Decimals is how many decimals the amount needs (0 to 6).
func (a Amount) Decimals() int {
	n := amountDecimals
	for f := int64(a) % AmountScale; n > 0 && f%10 == 0; f /= 10 {
		n--
	}
	return n
}

// Currency is an ISO 4217 currency code in upper case ("USD").
type Currency string

// ParseCurrency reads a three-letter ISO 4217 code in either case.
func ParseCurrency(s string) (Currency, error) {
	if len(s) != 3 || !isLetters(s) {
		return "", fmt.Errorf("currency %q: want a three-letter ISO 4217 code such as USD, EUR or JPY", s)
	}
	return Currency(strings.ToUpper(s)), nil
}

func isLetters(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i] | 0x20; c < 'a' || c > 'z' {
			return false
		}
	}
	return true
}

// Decimals is the currency's minor unit as ISO 4217 gives it: 0 for the
// yen, 3 for the Bahraini dinar, 2 for most.
func (c Currency) Decimals() int {
	switch c {
	case "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF":
		return 0
	case "BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND":
		return 3
	}
	return 2
}

// symbols are the currencies written with a sign rather than their code.
var symbols = map[Currency]string{"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}

// Format writes an amount in the currency's minor units (cents):
// "$1,234.50", "¥4,900", "CHF 49.00".
func (c Currency) Format(minor int64) string {
	return c.write(minor, c.Decimals())
}

// FormatAmount writes a price with the decimals it needs, at least the
// currency's: "$0.50", "$0.0005".
func (c Currency) FormatAmount(a Amount) string {
	dec := max(c.Decimals(), a.Decimals())
	return c.write(int64(a)/pow10(amountDecimals-dec), dec)
}

// write writes n, a count of 10^-dec major units.
func (c Currency) write(n int64, dec int) string {
	neg := n < 0
	if neg {
		n = -n
	}
	s := strconv.FormatInt(n, 10)
	if len(s) <= dec {
		s = strings.Repeat("0", dec-len(s)+1) + s
	}
	whole, frac := s[:len(s)-dec], s[len(s)-dec:]
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	sym, ok := symbols[c]
	if ok {
		b.WriteString(sym)
	} else {
		b.WriteString(string(c) + " ")
	}
	for i := range len(whole) {
		if i > 0 && (len(whole)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteByte(whole[i])
	}
	if dec > 0 {
		b.WriteString("." + frac)
	}
	return b.String()
}

func pow10(n int) int64 {
	p := int64(1)
	for range n {
		p *= 10
	}
	return p
}

// Cost is what a period costs with overage units beyond the included
// ones, in the currency's minor units: the fixed price plus each unit at
// a thousandth of Per1K, the sum rounded half up once (0.005 USD is a
// cent). It saturates at math.MaxInt64 instead of overflowing.
func (pr Pricing) Cost(overage int64) int64 {
	overage = max(overage, 0)
	// In billionths of a major unit, 128 bits wide: overage × Per1K, plus
	// Fixed × 1000, divided by 1000 × the Amount units of a minor unit.
	d := uint64(1000 * pow10(amountDecimals-pr.Currency.Decimals()))
	hi, lo := bits.Mul64(uint64(overage), uint64(pr.Per1K))
	var carry uint64
	lo, carry = bits.Add64(lo, uint64(pr.Fixed)*1000, 0)
	hi += carry
	lo, carry = bits.Add64(lo, d/2, 0)
	hi += carry
	if hi >= d {
		return math.MaxInt64
	}
	q, _ := bits.Div64(hi, lo, d)
	return int64(min(q, math.MaxInt64))
}

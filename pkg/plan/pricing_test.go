package plan

import (
	"math"
	"strings"
	"testing"
)

func TestParseAmountReadsTheTextExactly(t *testing.T) {
	tests := []struct {
		give    string
		want    Amount
		wantErr string
	}{
		{give: "49", want: 49_000_000},
		{give: "49.00", want: 49_000_000},
		{give: " 0.5 ", want: 500_000},
		{give: "0.0005", want: 500},
		{give: "0.000001", want: 1},
		{give: "007.10", want: 7_100_000},
		{give: "1000000", want: MaxAmount},
		// 0.1 + 0.2 is no float's 0.30000000000000004 here.
		{give: "0.3", want: 300_000},
		{give: "1000000.000001", wantErr: "at most 1000000"},
		{give: "99999999999999999999", wantErr: "at most 1000000"},
		{give: "0.0000001", wantErr: "at most 6 decimals"},
		{give: "-1", wantErr: "decimal number"},
		{give: "1e3", wantErr: "decimal number"},
		{give: "1,000", wantErr: "decimal number"},
		{give: "$49", wantErr: "decimal number"},
		{give: ".5", wantErr: "decimal number"},
		{give: "5.", wantErr: "decimal number"},
		{give: "", wantErr: "decimal number"},
		{give: "NaN", wantErr: "decimal number"},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			got, err := ParseAmount(tt.give)
			if got != tt.want || (err == nil) != (tt.wantErr == "") || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParseAmount(%q) = %d, %v; want %d, %q", tt.give, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestAmountStringAndDecimals(t *testing.T) {
	tests := []struct {
		give     Amount
		want     string
		decimals int
	}{
		{0, "0", 0},
		{49_000_000, "49", 0},
		{49_500_000, "49.5", 1},
		{500, "0.0005", 4},
		{1, "0.000001", 6},
		{MaxAmount, "1000000", 0},
	}
	for _, tt := range tests {
		if got, dec := tt.give.String(), tt.give.Decimals(); got != tt.want || dec != tt.decimals {
			t.Errorf("%d: %q, %d decimals; want %q, %d", int64(tt.give), got, dec, tt.want, tt.decimals)
		}
	}
}

func TestCurrencyIsThreeLettersAndKnowsItsMinorUnit(t *testing.T) {
	tests := []struct {
		give     string
		want     Currency
		decimals int
		wantErr  bool
	}{
		{give: "usd", want: "USD", decimals: 2},
		{give: "EUR", want: "EUR", decimals: 2},
		{give: "jpy", want: "JPY", decimals: 0},
		{give: "KWD", want: "KWD", decimals: 3},
		{give: "US", wantErr: true},
		{give: "US$", wantErr: true},
		{give: "dollars", wantErr: true},
		{give: "", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseCurrency(tt.give)
		if got != tt.want || (err != nil) != tt.wantErr || got.Decimals() != tt.decimals && !tt.wantErr {
			t.Errorf("ParseCurrency(%q) = %q (%d decimals), %v", tt.give, got, got.Decimals(), err)
		}
	}
}

func TestFormatWritesMoneyAsPeopleRead(t *testing.T) {
	tests := []struct {
		currency Currency
		minor    int64
		want     string
	}{
		{"USD", 0, "$0.00"},
		{"USD", 5, "$0.05"},
		{"USD", 123450, "$1,234.50"},
		{"EUR", 4900, "€49.00"},
		{"GBP", 100000000, "£1,000,000.00"},
		{"JPY", 4900, "¥4,900"},
		{"CHF", 4900, "CHF 49.00"},
		{"KWD", 1250, "KWD 1.250"},
	}
	for _, tt := range tests {
		if got := tt.currency.Format(tt.minor); got != tt.want {
			t.Errorf("%s %d: %q, want %q", tt.currency, tt.minor, got, tt.want)
		}
	}
	prices := []struct {
		currency Currency
		give     Amount
		want     string
	}{
		{"USD", 500_000, "$0.50"},
		{"USD", 500, "$0.0005"},
		{"USD", 49_000_000, "$49.00"},
		{"JPY", 5_000_000, "¥5"},
		{"JPY", 500_000, "¥0.5"},
	}
	for _, tt := range prices {
		if got := tt.currency.FormatAmount(tt.give); got != tt.want {
			t.Errorf("%s %s: %q, want %q", tt.currency, tt.give, got, tt.want)
		}
	}
}

// Cost never overflows: at the largest figures it saturates.
func TestCostSaturates(t *testing.T) {
	pr := Pricing{Currency: "JPY", Fixed: MaxAmount, Per1K: MaxAmount}
	if got := pr.Cost(math.MaxInt64); got != math.MaxInt64 {
		t.Fatalf("Cost = %d", got)
	}
	if got := pr.Cost(-5); got != 1_000_000 {
		t.Fatalf("Cost of negative units = %d, want the fixed price", got)
	}
}

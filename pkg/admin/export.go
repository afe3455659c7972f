package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/apikey"
)

// ExportQuery is what a usage export asks for.
type ExportQuery struct {
	// Month selects the billing periods that start in it (period=2026-11);
	// zero: the periods in progress.
	Month time.Time
	// Label is the consumer label usage is grouped by (by=label:team).
	Label string
}

// ExportReport is a usage export: its JSON is encoding/json's, its CSV
// what WriteCSV writes.
type ExportReport interface {
	WriteCSV(w io.Writer) error
}

// Export formats.
const (
	FormatJSON = "json"
	FormatCSV  = "csv"
)

// ParseExportQuery reads an export's period (2026-11, or "" for the
// periods in progress), grouping (label:team, or team) and format (csv
// or json; "" is json), with errors that say what is wanted. levy usage
// export checks its flags with it before calling.
func ParseExportQuery(period, by, format string) (ExportQuery, string, error) {
	var q ExportQuery
	if period != "" {
		m, err := time.Parse("2006-01", period)
		if err != nil {
			return q, "", fmt.Errorf("period %q: want a month such as 2026-11", period)
		}
		q.Month = m
	}
	if by == "" {
		return q, "", errors.New("by is required: the consumer label to group by, such as label:team")
	}
	q.Label = strings.TrimPrefix(by, "label:")
	if err := apikey.ValidateLabelKey(q.Label); err != nil {
		return q, "", fmt.Errorf("by %q: want label:KEY with a label key, such as label:team: %v", by, err)
	}
	switch format {
	case "":
		format = FormatJSON
	case FormatJSON, FormatCSV:
	default:
		return q, "", fmt.Errorf("format %q: want csv or json", format)
	}
	return q, format, nil
}

// usageExport answers GET /v1/usage/export: usage grouped by a consumer
// label (chargeback for internal marketplaces), as JSON or CSV.
func (h *Handler) usageExport(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	for name := range v {
		if name != "period" && name != "by" && name != "format" {
			writeProblem(w, http.StatusBadRequest, "unknown_parameter", "unknown parameter "+strconv.Quote(name)+"; known: period, by, format")
			return
		}
	}
	q, format, err := ParseExportQuery(v.Get("period"), v.Get("by"), v.Get("format"))
	if err != nil {
		writeProblem(w, http.StatusBadRequest, "invalid_export", err.Error())
		return
	}
	if h.cfg.Export == nil {
		writeProblem(w, http.StatusServiceUnavailable, "export_unavailable", "usage exports are not available")
		return
	}
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(reconcileTime))
	rep, err := h.cfg.Export(r.Context(), q)
	switch {
	case errors.Is(err, ErrUnavailable):
		writeProblem(w, http.StatusServiceUnavailable, "export_unavailable", err.Error())
		return
	case err != nil:
		h.log.Error("usage export", zap.String("by", q.Label), zap.Error(err))
		writeProblem(w, http.StatusServiceUnavailable, "store_unavailable", "the ledger cannot be read right now")
		return
	}
	if format == FormatJSON {
		writeJSON(w, http.StatusOK, rep)
		return
	}
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="usage-`+exportName(q)+`.csv"`)
	if err := rep.WriteCSV(w); err != nil {
		h.log.Warn("write usage export", zap.Error(err))
	}
}

// exportName names an export's file: usage-2026-11-team.csv.
func exportName(q ExportQuery) string {
	period := "current"
	if !q.Month.IsZero() {
		period = q.Month.Format("2006-01")
	}
	return period + "-" + q.Label
}

// Exporter is Config.Export.
type Exporter func(ctx context.Context, q ExportQuery) (ExportReport, error)

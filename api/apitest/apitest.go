// Package apitest checks levy's HTTP handlers against api/openapi.yaml in
// tests: Handler wraps a real handler and validates every request and
// response that passes through it with kin-openapi's openapi3filter.
package apitest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/levyhq/levy/api"
)

// Load parses and validates the OpenAPI description.
func Load() (*openapi3.T, error) {
	doc, err := openapi3.NewLoader().LoadFromData(api.OpenAPIYAML)
	if err != nil {
		return nil, fmt.Errorf("load api/openapi.yaml: %w", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("api/openapi.yaml: %w", err)
	}
	return doc, nil
}

// The developer portal and the console answer HTML pages and their CSS
// and JavaScript, and usage exports CSV:
// their bodies are checked as text.
func init() {
	for _, ct := range []string{"text/html", "text/css", "text/javascript", "text/csv"} {
		openapi3filter.RegisterBodyDecoder(ct, openapi3filter.FileBodyDecoder)
	}
}

var loaded = sync.OnceValues(func() (routers.Router, error) {
	doc, err := Load()
	if err != nil {
		return nil, err
	}
	return gorillamux.NewRouter(doc)
})

// Handler serves h, failing t when what passes through disagrees with the
// description:
//   - a request to no documented route must be answered 404 or 405;
//   - a request the description calls invalid must be answered 4xx;
//   - every response must be documented for its route and status, with a
//     body and headers that match its schema.
func Handler(t testing.TB, h http.Handler) http.Handler {
	router, err := loaded()
	if err != nil {
		t.Fatal(err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		res := rec.Result()
		for k, v := range res.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(res.StatusCode)
		w.Write(rec.Body.Bytes())

		what := r.Method + " " + r.URL.RequestURI()
		// The router matches on the URL's host and scheme too.
		u := *r.URL
		u.Scheme, u.Host = "http", r.Host
		check := r.Clone(context.Background())
		check.URL = &u
		check.Body = io.NopCloser(bytes.NewReader(body))
		route, params, err := router.FindRoute(check)
		if err != nil {
			if res.StatusCode != http.StatusNotFound && res.StatusCode != http.StatusMethodNotAllowed {
				t.Errorf("%s: no documented route (%v), yet answered %d", what, err, res.StatusCode)
			}
			return
		}
		in := &openapi3filter.RequestValidationInput{Request: check, PathParams: params, Route: route,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, IncludeResponseStatus: true}}
		if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil && res.StatusCode/100 != 4 {
			t.Errorf("%s: the description calls the request invalid (%v), yet it was answered %d", what, err, res.StatusCode)
		}
		out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: res.StatusCode, Header: res.Header,
			Body: io.NopCloser(bytes.NewReader(rec.Body.Bytes())), Options: in.Options}
		if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
			t.Errorf("%s: response %d does not match api/openapi.yaml: %v\nbody: %.500s", what, res.StatusCode, err, rec.Body.String())
		}
	})
}

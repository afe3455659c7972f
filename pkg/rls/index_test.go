package rls_test

import "github.com/levyhq/levy/pkg/apikey"

func apikeyIndex(c []*apikey.Consumer, k []*apikey.Key) *apikey.Index { return apikey.NewIndex(c, k) }

package redisstore

// The developer portal's Redis keys, one function per key, so that they
// can join the rest of levy's key layout in one place.

// portalLinkKey holds a sign-in link's record under the hash of its token
// (a used link keeps an empty value until the key expires).
func portalLinkKey(hash string) string { return "levy:portal:link:" + hash }

// portalSessionKey holds a portal session's record under the hash of its
// id.
func portalSessionKey(hash string) string { return "levy:portal:session:" + hash }

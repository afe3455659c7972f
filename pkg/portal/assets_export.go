package portal

// Stylesheet is the portal's CSS, for the operator console to share its
// look (pkg/console serves it beside its own).
func Stylesheet() []byte {
	b, _ := files.ReadFile("assets/portal.css")
	return b
}

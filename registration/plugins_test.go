package registration

// The tests of this package use the selector types of the unix and
// join_token attestors, which those packages register (they import this
// one, so its tests cannot import them). Register them here the same way.
// That the binary knows them is tested in cmd/sigil
// (TestBinaryKnowsPluginSelectorTypes).
func init() {
	RegisterSelectorType("unix", ValidateUnixSelector)
	RegisterSelectorType("join_token", ValidateJoinTokenSelector)
}

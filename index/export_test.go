package index

// EncodeUnchecked encodes x without validating it, so tests can hand Decode
// the bytes of an index MarshalBinary would refuse.
func EncodeUnchecked(x *Index) []byte { return x.encode() }

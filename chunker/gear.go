package chunker

// gear maps each byte to a random 64-bit value. The values are part of the
// chunk format: changing them changes every boundary and so every chunk ID.
// They come from splitmix64 seeded with a fixed constant.
var gear [256]uint64

func init() {
	x := uint64(0x6d6b626f6f746673) // "mkbootfs"
	for i := range gear {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
		z = (z ^ z>>27) * 0x94d049bb133111eb
		gear[i] = z ^ z>>31
	}
}

//go:build !amd64 || purego

package crc64ecma

import "hash/crc64"

const bestImpl = implGeneric

func supportedImpls() []impl { return []impl{implGeneric} }

func update(crc uint64, p []byte, _ impl) uint64 { return crc64.Update(crc, table, p) }

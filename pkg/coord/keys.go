package coord

import (
	"fmt"
	"regexp"
)

// keyPrefix starts every key modelcast writes in Redis.
const keyPrefix = "modelcast"

// tenantRE: tenants name key spaces; they are kept to a safe alphabet.
var tenantRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidTenant checks a tenant name.
func ValidTenant(t string) error {
	if !tenantRE.MatchString(t) {
		return fmt.Errorf("tenant %q must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", t)
	}
	return nil
}

// Tenant-wide keys share the tenant's hash tag; a model's keys share the model's, so every
// multi-key step stays within one Redis Cluster slot.
func tokenKey(tenant string) string { return fmt.Sprintf("%s:{%s}:token", keyPrefix, tenant) }
func nodeKey(tenant, node string) string {
	return fmt.Sprintf("%s:{%s}:node:%s", keyPrefix, tenant, node)
}
func manifestKey(tenant, pathID string) string {
	return fmt.Sprintf("%s:{%s/%s}:manifest", keyPrefix, tenant, pathID)
}
func modelKey(tenant, key, what string) string {
	return fmt.Sprintf("%s:{%s/%s}:%s", keyPrefix, tenant, key, what)
}
func chainKey(tenant, key string) string    { return modelKey(tenant, key, "chain") }
func seqKey(tenant, key string) string      { return modelKey(tenant, key, "seq") }
func progressKey(tenant, key string) string { return modelKey(tenant, key, "progress") }
func sumsKey(tenant, key string) string     { return modelKey(tenant, key, "sums") }
func infoKey(tenant, key string) string     { return modelKey(tenant, key, "info") }
